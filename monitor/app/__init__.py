"""The composition root: the service, the pipeline that passes data from stage to stage, web and metrics."""
