"""Reports of a recommendation: Rich console table, Matplotlib plots, a self-contained HTML page.

Everything here works from the document dict (``Recommendation.to_dict()``), so a saved
``recommendation.json`` can be re-rendered without re-measuring::

    from batchsage.report import print_recommendation, write_report
    print_recommendation(rec.to_dict(), console)
    paths = write_report(rec.to_dict(), Path("out"))   # plots/*.png and report.html
"""

from batchsage.report.console import print_recommendation
from batchsage.report.fit_report import write_fit_report
from batchsage.report.html import render_report, write_report

__all__ = ["print_recommendation", "render_report", "write_fit_report", "write_report"]
