"""Streamlit dashboard for exploring a drf-batch scores database (entry point: `app/dashboard.py`)."""
