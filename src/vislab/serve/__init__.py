"""`vislab serve`: trained runs as a small web service (a page, a JSON API, micro-batching).

`server.serve` is the command; `app.create_app` the FastAPI app; `batching` shares forward
passes between concurrent requests; `predictors` holds everything task-specific.
"""
