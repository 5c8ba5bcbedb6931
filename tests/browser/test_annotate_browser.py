"""A person's session in a real browser: log in, read the guidelines, label with the mouse and with the
keyboard, undo, skip, reopen the guidelines; then an admin sees agreement, edits the guidelines and
exports. Each step is checked in the database and kept as a screenshot (test-artifacts/browser/)."""

import json

from sqlalchemy import select

from rlhfkit.annotate.export import export_rows
from rlhfkit.annotate.records import TaskRecord
from rlhfkit.annotate.schema import assignments


def seed(store):
    """Six pairs (K=3) already labelled by bob and carol, two gold pairs, guidelines, and the people."""
    store.import_tasks([TaskRecord(f"p{i}", "pair", f"How do I greet someone politely? ({i})",
                                   f"good answer {i}: say hello and smile", f"bad answer {i}: ignore them")
                        for i in range(6)], overlap=3, gold_rate=0.0)
    store.set_guidelines("# How to choose\n\nPrefer the **polite** answer. Use *tie* only when both are equal.")
    store.add_user("alice", "annotator", "alice-password")
    store.add_user("boss", "admin", "boss-password")
    for name, contrary in (("bob", ()), ("carol", (1, 4))):
        uid = store.user_by_token(store.add_user(name, "annotator")[1]).id
        while (task := store.next_task(uid, progress=False)) is not None:
            good = "a" if task["a"].startswith("good") else "b"
            bad = "b" if good == "a" else "a"
            n = int(task["a"].split()[2].rstrip(":"))
            store.submit_label(uid, task["task_id"], bad if n in contrary else good, "better")


def next_task(page, task_id):
    """Wait for the page to show another pair than ``task_id`` (a selector, not page-side JS, which the
    pages' Content-Security-Policy would refuse to evaluate)."""
    page.wait_for_selector(f'#label-form:not([data-task="{task_id}"])')


def texts(store, task_id):
    row = store.task_rows()[task_id]
    return row["response_a"], row["response_b"]


def my_labels(store, name="alice"):
    return {r["task_id"]: r for r in store.label_rows() if r["annotator"] == name}


def test_annotator_and_admin_in_chromium(browser, live_server, artifacts):
    base, store = live_server
    seed(store)
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    foreign, errors = [], []
    page.on("request", lambda r: None if r.url.startswith(base) else foreign.append(r.url))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    shot = lambda name: page.screenshot(path=str(artifacts / f"{name}.png"), full_page=True)  # noqa: E731

    # log in: the guidelines come before the first task
    page.goto(f"{base}/annotate")
    assert page.url == f"{base}/login"
    shot("01-login")
    page.fill("#name", "alice")
    page.fill("#password", "alice-password")
    page.click("#login")
    page.wait_for_url(f"{base}/guidelines")
    assert page.is_visible("#guidelines-first")
    assert page.inner_text("#guidelines-text strong") == "polite"
    shot("02-guidelines")
    page.click("#start")
    page.wait_for_url(f"{base}/annotate")

    # label with the mouse: click the right-hand card, a strength, type a comment, submit
    t1 = int(page.get_attribute("#label-form", "data-task"))
    right_text = page.inner_text("#response-b pre")
    page.click("#response-b")
    assert page.is_checked("#choice-b")
    page.click("label:has(#strength-much_better)")
    page.fill("#comment", "clearer and kinder")
    shot("03-pair-chosen-with-mouse")
    page.click("#submit")
    next_task(page, t1)
    got = my_labels(store)[t1]
    assert "ab"[texts(store, t1).index(right_text)] == got["choice"]  # mapped back to the imported order
    assert (got["strength"], got["margin"], got["comment"]) == ("much_better", 1.0, "clearer and kinder")

    # label with the keyboard: B (right), 2 (better), Enter
    t2 = int(page.get_attribute("#label-form", "data-task"))
    left_text = page.inner_text("#response-a pre")
    page.keyboard.press("b")
    page.keyboard.press("2")
    assert page.is_checked("#choice-b") and page.is_checked("#strength-better")
    page.keyboard.press("Enter")
    page.wait_for_selector("#undo")
    next_task(page, t2)
    got = my_labels(store)[t2]
    assert got["choice"] == "ab"[1 - texts(store, t2).index(left_text)] and got["strength"] == "better"
    assert page.inner_text("#done-count") == "2"
    shot("04-after-keyboard-label")

    # undo (U): the last label is gone and its pair is back on screen
    page.keyboard.press("u")
    page.wait_for_selector("#notice")
    assert "undone" in page.inner_text("#notice")
    assert int(page.get_attribute("#label-form", "data-task")) == t2
    assert t2 not in my_labels(store) and t1 in my_labels(store)
    shot("05-undone")
    page.keyboard.press("t")  # now a tie, again from the keyboard
    page.keyboard.press("Enter")
    next_task(page, t2)
    assert my_labels(store)[t2]["choice"] == "tie" and my_labels(store)[t2]["strength"] is None

    # guidelines on demand (G), then back
    t3 = int(page.get_attribute("#label-form", "data-task"))
    page.keyboard.press("g")
    page.wait_for_url(f"{base}/guidelines")
    assert not page.is_visible("#guidelines-first") and "polite" in page.inner_text("#guidelines-text")
    page.click("#start")
    page.wait_for_url(f"{base}/annotate")
    assert int(page.get_attribute("#label-form", "data-task")) == t3  # still the same task

    # skip with the mouse
    page.click("#skip")
    page.wait_for_selector("#notice")
    with store.read() as conn:
        status = conn.execute(select(assignments.c.status).where(assignments.c.task_id == t3)
                              .where(assignments.c.user_id == store.login("alice", "alice-password").id)).scalar()
    assert status == "skipped"
    assert int(page.get_attribute("#label-form", "data-task")) not in (t1, t2, t3)
    shot("06-skipped")
    page.click("#logout")
    page.wait_for_url(f"{base}/login")

    # the admin: agreement on the dashboard, new guidelines, export
    page.fill("#name", "boss")
    page.fill("#password", "boss-password")
    page.click("#login")
    page.wait_for_url(f"{base}/admin")
    alpha = float(page.inner_text("#alpha"))
    assert -1 <= alpha <= 1
    assert page.inner_text("#label-total") == str(len(store.label_rows()))
    table = page.inner_text("#annotators")
    assert all(name in table for name in ("alice", "bob", "carol"))
    assert page.locator("#cohen tbody tr").count() == 3  # alice-bob, alice-carol, bob-carol
    shared = page.locator("#cohen tbody td:nth-child(3)").all_inner_texts()
    assert shared == ["2", "2", "6"], shared  # alice labelled two pairs (one undone and redone, one skipped)
    shot("07-dashboard")
    page.fill("#guidelines-markdown", "# How to choose\n\nPrefer the **polite** answer, and the **shorter** one.")
    page.click("#save-guidelines")
    page.wait_for_selector("#notice")
    assert "version 2" in page.inner_text("#notice")
    with page.expect_download() as info:
        page.click("#export-majority")
    path = artifacts / "export-majority.jsonl"
    info.value.save_as(str(path))
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    assert rows and all({"prompt", "chosen", "rejected", "agreement"} <= set(r) for r in rows)
    assert rows == export_rows(store, "majority")[0]  # what the database holds, majority-voted
    assert sum(r["chosen"].startswith("good") for r in rows) >= len(rows) - 2  # only alice and carol differ
    shot("08-exported")
    page.click("#logout")

    # alice sees the changed guidelines before her next task
    page.fill("#name", "alice")
    page.fill("#password", "alice-password")
    page.click("#login")
    page.wait_for_url(f"{base}/guidelines")
    assert page.is_visible("#guidelines-first") and "shorter" in page.inner_text("#guidelines-text")
    shot("09-guidelines-changed")
    context.close()
    assert not foreign, f"requests left the server: {foreign}"
    assert not errors, errors
