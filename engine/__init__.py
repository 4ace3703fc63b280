"""The engine of the chest X-ray study explorer: data, backbones, training, metrics, jobs.

No Streamlit here; the app's pages are thin views over this package's public API.
"""
