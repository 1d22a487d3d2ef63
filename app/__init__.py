"""The face: FastAPI REST API, job store and the Dash dashboard (never imports torch)."""
