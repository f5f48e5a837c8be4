"""Everything HTTP: the aiohttp application, its routes side by side, the error boundary, the
middlewares, the web console and the OpenAPI document. It calls the services only."""
