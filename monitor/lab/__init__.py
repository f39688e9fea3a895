"""Developer tools (demo, replay server, evaluation). Production code never imports this package."""
