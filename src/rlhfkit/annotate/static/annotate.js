// Keyboard shortcuts for the annotation pages. Plain JS, served locally; the pages work without it.
(function () {
  "use strict";
  function flash(text) {
    var el = document.createElement("div");
    el.className = "flash"; el.setAttribute("role", "status"); el.textContent = text;
    document.body.appendChild(el);
    setTimeout(function () { el.remove(); }, 1800);
  }
  function pick(form, name, value) {
    var el = form.querySelector('input[name="' + name + '"][value="' + value + '"]');
    if (!el) return;
    el.checked = true;
    el.dispatchEvent(new Event("change", { bubbles: true }));
  }
  function submit(form) {
    if (form.requestSubmit) form.requestSubmit(); else form.submit();
  }
  document.addEventListener("DOMContentLoaded", function () {
    var label = document.getElementById("label-form");
    var demo = document.getElementById("demonstration-form");
    if (label) {
      // A tie has no strength: clear it so the form never sends both.
      label.addEventListener("change", function (e) {
        if (e.target.name === "choice" && e.target.value === "tie") pick(label, "strength", "");
        if (e.target.name === "strength" && e.target.value !== "" && label.querySelector('input[value="tie"]:checked')) {
          pick(label, "strength", ""); flash("a tie has no strength");
        }
      });
      label.addEventListener("submit", function (e) {
        if (!label.querySelector('input[name="choice"]:checked')) { e.preventDefault(); flash("Choose A, B or tie first"); }
      });
    }
    document.addEventListener("keydown", function (e) {
      if (e.ctrlKey || e.metaKey) {
        if (e.key === "Enter" && (label || demo)) { e.preventDefault(); submit(label || demo); }
        return;
      }
      if (e.altKey || e.target.matches("textarea, input[type=text], input[type=password]")) return;
      var key = e.key.length === 1 ? e.key.toLowerCase() : e.key;
      if (label) {
        var choices = { a: "a", ArrowLeft: "a", b: "b", ArrowRight: "b", t: "tie" };
        var strengths = { "1": "slightly_better", "2": "better", "3": "much_better", "0": "" };
        if (key in choices) { pick(label, "choice", choices[key]); e.preventDefault(); return; }
        if (key in strengths) { pick(label, "strength", strengths[key]); e.preventDefault(); return; }
        if (key === "Enter") { e.preventDefault(); submit(label); return; }
        if (key === "c") { e.preventDefault(); document.getElementById("comment").focus(); return; }
      }
      var target = document.querySelector('[data-shortcut="' + key + '"]');
      if (!target) return;
      e.preventDefault();
      if (target.tagName === "FORM") submit(target); else target.click();
    });
  });
})();
