import pandas as pd

from playbook.display import show_table


def test_reply_tables_keep_line_breaks_left_aligned_and_escaped():
    table = show_table(pd.DataFrame({"reply": ["Sure!\n\nStep 1: <open> the lid.", "No."], "score": [0.25, 1.0]}))
    bundle = table._repr_mimebundle_()
    html = bundle["text/html"]
    assert "white-space: pre-wrap" in html and "text-align: left" in html
    assert "Sure!\n\nStep 1: &lt;open&gt; the lid." in html and "\\n" not in html
    assert "Sure! ↵ Step 1: <open> the lid." in bundle["text/plain"] and "0.25" in bundle["text/plain"]
