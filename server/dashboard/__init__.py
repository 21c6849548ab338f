"""The dashboard: pages, the JSON API and the downloads (progress.png, results.tsv).

data.py builds the view models from the Lab, chart.py draws progress.png, pages.py writes the
HTML, routes.py registers it all on the FastAPI app (server/web.py calls `register`).
"""

from server.dashboard.routes import register

__all__ = ["register"]
