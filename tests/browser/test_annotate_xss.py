"""Prompts and responses holding <script> and event-handler markup render as text in a real browser:
nothing runs. The context bypasses the Content-Security-Policy, so what is proved is the escaping
itself (the CSP is a second wall, checked by the header assertion)."""

PAYLOADS = ["<script>document.documentElement.setAttribute('data-xss', 'script')</script>",
            "<img src=x onerror=\"document.documentElement.setAttribute('data-xss', 'img')\">",
            "<svg onload=\"document.documentElement.setAttribute('data-xss', 'svg')\"></svg>"]


def test_script_in_prompts_and_responses_does_not_run(browser, live_server):
    from rlhfkit.annotate.records import TaskRecord

    base, store = live_server
    store.import_tasks([TaskRecord("x1", "pair", "prompt " + PAYLOADS[0], "answer " + PAYLOADS[1],
                                   "other " + PAYLOADS[2])], overlap=1, gold_rate=0.0)
    store.import_tasks([TaskRecord("x2", "demonstration", "write " + PAYLOADS[1], draft=PAYLOADS[0])],
                       overlap=1, gold_rate=0.0)
    store.add_user("alice", "annotator", "alice-password")
    context = browser.new_context(bypass_csp=True)
    page = context.new_page()
    dialogs, errors = [], []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{base}/login")
    page.fill("#name", "alice")
    page.fill("#password", "alice-password")
    page.click("#login")
    page.wait_for_url(f"{base}/annotate")
    response = page.goto(f"{base}/annotate")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert "<script>document" not in response.text() and "<img src=x" not in response.text()
    seen = set()
    for _ in range(2):  # the pair and the demonstration, in whichever order they are handed out
        page.wait_for_selector("#label-form, #demonstration-form")
        page.wait_for_timeout(300)  # give an (escaped) onerror/onload the chance to fire
        assert page.get_attribute("html", "data-xss") is None
        text = page.inner_text("body")
        if page.locator("#label-form").count():
            seen.add("pair")
            assert PAYLOADS[0] in text and PAYLOADS[1] in text and PAYLOADS[2] in text  # shown as text
        else:
            seen.add("demonstration")
            assert PAYLOADS[1] in text and page.input_value("#demonstration-form textarea") == PAYLOADS[0]
        with page.expect_navigation():
            page.click("#skip")
    assert seen == {"pair", "demonstration"}
    assert dialogs == [] and not [e for e in errors if "xss" in e]
    context.close()
