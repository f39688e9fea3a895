"""monitor: news-monitoring alerts."""

__version__ = "0.1.0"
