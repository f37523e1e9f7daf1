"""Reports: the HTML report page with its figures, the predicted-vs-measured ledger and
the offline demo. Matplotlib only (Agg renderer); never torch."""
