"""The report: figures and tables drawn from the result CSVs."""
