"""What analysts read and take elsewhere: the HTML / Markdown report and the XLSX and REFI-QDA
exports."""
