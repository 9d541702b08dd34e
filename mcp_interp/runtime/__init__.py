"""Infrastructure the tools run on, not MCP tools themselves: the app context, the job manager, the run
cache and the task registry. Imports neither `tools` nor `server`."""
