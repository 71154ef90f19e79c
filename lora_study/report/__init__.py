"""A study's report: its runs read back from MLflow (`read`), the page's sections (`sections`, with
the answer in `answer` and each factor's effect in `effects`, whose sentences `findings` makes by
stated rules), the page rendered as HTML and Markdown (`render`), and published on the sweep's
parent run (`publish.write_report`).
"""
