"""What the dashboard's pages call: torch-free tables, charts, forms and the report."""
