"""The results report: results.json rows, the table and the plot (python -m sslseg.report.results)."""
