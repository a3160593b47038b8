"""The rendered book in a real browser, offline: what a reader of the HTML sees.

``make browser-test`` runs this after ``make book``. Debian's Chromium, headless, opens every page
of ``_build/html``, served from 127.0.0.1; every request for anything else is refused and reported,
so a page that needs the network fails here. On each page it checks that every figure image
loaded, every slider panel rendered, every live plot shows the last state saved in its chapter,
the math is typeset with no raw ``\\(`` left, and no error, traceback or stderr output shows. At a
1280 px wide window nothing in the page's content scrolls or spills sideways (folded answers opened),
no text printed as aligned columns wraps (tables belong in HTML or Markdown), every slider panel
carries the note that it needs a running kernel, and every figure is shown at its
drawn size, no wider than the content column that :mod:`pidutils.plots` draws for, so its text keeps
the size ``tests/test_plots.py`` checks. It saves a full-page screenshot of each page under
``_build/screenshots/`` for humans.
"""
from __future__ import annotations

import functools
import http.server
import json
import os
import pathlib
import threading
from dataclasses import dataclass, field

import pytest
import yaml
from playwright import sync_api as playwright  # pip install -r tests/browser/requirements.txt

ROOT = pathlib.Path(__file__).resolve().parents[2]
HTML = ROOT / "_build" / "html"
SCREENSHOTS = ROOT / "_build" / "screenshots"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# Flags for a root user in a container with no network (what the machine's own probe uses).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]
# pydata-sphinx-theme logs this on a browser's first visit, before a light/dark choice is saved.
THEME_FIRST_VISIT = "Got invalid theme mode: . Resetting to auto."
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def toc_pages() -> list[str]:
    """Every page of the book, as paths below ``_config.yml``'s folder without a suffix."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    return [toc["root"]] + [c["file"] for part in toc["parts"] for c in part["chapters"]]


PAGES = toc_pages()


@dataclass
class Report:
    """What the browser saw on one page."""

    page: str
    offsite: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    dom: dict = field(default_factory=dict)


def saved_outputs(page: str) -> tuple[int, list[str], int]:
    """From the committed chapter: its PNG figures, each live plot's last PNG, and its slider count."""
    path = ROOT / f"{page}.ipynb"
    if not path.exists():
        return 0, [], 0
    nb = json.loads(path.read_text())
    figures = sum("image/png" in o.get("data", {}) for c in nb["cells"] for o in c.get("outputs", []))
    state = widget_state(nb)
    live = [o["data"]["image/png"].replace("\n", "") for m in state.values() if m["model_name"] == "OutputModel"
            for o in m["state"]["outputs"][-1:] if "image/png" in o.get("data", {})]
    sliders = sum(m["model_name"] == "IntSliderModel" for m in state.values())
    return figures, live, sliders


def saved_choices(page: str) -> list[tuple[str, int, str]]:
    """From the committed chapter: each row of choice buttons, as (label, number of choices, picked)."""
    path = ROOT / f"{page}.ipynb"
    if not path.exists():
        return []
    return [(m["state"]["description"], len(m["state"]["_options_labels"]),
             m["state"]["_options_labels"][m["state"]["index"]])
            for m in widget_state(json.loads(path.read_text())).values() if m["model_name"] == "ToggleButtonsModel"]


CONTROL_MODELS = {"IntSliderModel", "FloatSliderModel", "ToggleButtonsModel", "DropdownModel", "RadioButtonsModel",
                  "CheckboxModel", "ButtonModel"}


def saved_panels(page: str) -> int:
    """From the committed chapter: how many widget views in its outputs hold a control (a slider panel)."""
    path = ROOT / f"{page}.ipynb"
    if not path.exists():
        return 0
    nb = json.loads(path.read_text())
    state = widget_state(nb)

    def holds_control(model_id: str) -> bool:
        model = state.get(model_id, {})
        return model.get("model_name") in CONTROL_MODELS or any(
            holds_control(c.removeprefix("IPY_MODEL_")) for c in model.get("state", {}).get("children", []))

    views = [o["data"]["application/vnd.jupyter.widget-view+json"]["model_id"] for c in nb["cells"]
             for o in c.get("outputs", []) if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    return sum(holds_control(v) for v in views)


def widget_state(nb: dict) -> dict:
    """The widget models saved with a notebook, by id."""
    return nb["metadata"].get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})


@pytest.fixture(scope="module")
def site() -> str:
    """``_build/html`` served on a free port of 127.0.0.1."""
    if not (HTML / "index.html").exists():
        pytest.fail("no built book: run `make book` first")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(HTML))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


@pytest.fixture(scope="module")
def browser():
    if not pathlib.Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: apt-get install chromium (or set CHROMIUM)")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


# Runs in the page once it has loaded: waits for MathJax and for every widget view to render.
SETTLE = """async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) await MathJax.startup.promise;
  const views = [...document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]')];
  const rendered = () => views.every(v => v.previousElementSibling
      && v.previousElementSibling.querySelector('.jupyter-widgets'));
  for (let i = 0; i < 300 && !rendered(); i++) await new Promise(r => setTimeout(r, 100));
  const images = [...document.images];
  await Promise.all(images.map(i => i.complete ? null : new Promise(r => { i.onload = i.onerror = r; })));
  return rendered();
}"""

# Runs in the page after SETTLE: what a reader would see, as data.
LOOK = """() => {
  const main = document.querySelector('main') || document.body;
  const text = [...main.querySelectorAll('*')]
      .filter(e => !e.closest('pre, code, script, style, .highlight, mjx-container, .widget-subarea'))
      .map(e => [...e.childNodes].filter(n => n.nodeType === 3).map(n => n.textContent).join('')).join(' ');
  const images = [...main.querySelectorAll('img')];
  return {
    broken_images: images.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src.slice(0, 80)),
    figure_images: images.filter(i => i.closest('.cell_output') && !i.closest('.widget-subarea')).length,
    widget_views: document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]').length,
    rendered_views: [...document.querySelectorAll('.widget-subarea')].filter(e => e.querySelector('.jupyter-widgets')).length,
    choices: [...main.querySelectorAll('.widget-toggle-buttons')].map(t => ({
        label: (t.querySelector('.widget-label') || {}).textContent,
        buttons: t.querySelectorAll('button').length,
        picked: [...t.querySelectorAll('button.mod-active')].map(b => b.textContent.trim())})),
    sliders: [...main.querySelectorAll('.widget-slider')].map(s => ({
        label: (s.querySelector('.widget-label') || {}).textContent,
        readout: ((s.querySelector('.widget-readout') || {}).textContent || '').trim(),
        width: s.getBoundingClientRect().width})),
    live_images: [...main.querySelectorAll('.widget-output img')].map(i => ({
        src: i.src.replace(/^data:image\\/png;base64,/, ''), width: i.naturalWidth})),
    panels: [...document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]')]
        .map(v => v.previousElementSibling)
        .filter(a => a && a.matches('.widget-subarea') && a.querySelector(
            '.widget-slider, .widget-toggle-buttons, .widget-dropdown, .widget-radio, .widget-checkbox, .widget-button'))
        .map(a => {
          const note = a.previousElementSibling && a.previousElementSibling.matches('.kernel-note')
              ? a.previousElementSibling : null;
          const style = note && getComputedStyle(note), box = note && note.getBoundingClientRect();
          return {
            controls: [...a.querySelectorAll('.widget-label')].map(l => l.textContent.trim()).join(', '),
            note: note ? note.innerText.replace(/\\s+/g, ' ').trim() : null,
            visible: !!note && box.height > 20 && box.width > 300 && style.visibility === 'visible'
                && parseFloat(style.opacity) > 0.5,
            link: note && note.querySelector('a') ? note.querySelector('a').href : null};
        }),
    notes: main.querySelectorAll('.kernel-note').length,
    colab_button: (document.querySelector('.dropdown-launch-buttons a[href*="colab"]') || {}).href || null,
    math_spans: main.querySelectorAll('.math').length,
    typeset: main.querySelectorAll('mjx-container').length,
    math_errors: main.querySelectorAll('mjx-merror').length,
    raw_math: (text.match(/\\\\\\(|\\\\\\[|\\$\\$/g) || []).length,
    figure_text: (main.innerText.match(/<Figure size/g) || []).length,
    error_outputs: main.querySelectorAll('.output.traceback, .output.error, .output.stderr').length,
    traceback_text: (main.innerText.match(/Traceback \\(most recent call last\\)/g) || []).length,
  };
}"""


# Runs in the page after the screenshot, with every folded answer (<details>) opened: what scrolls or
# spills sideways in the page's content column, and how each figure is shown. An element "scrolls"
# when its overflow is not visible and its content is wider than its box (a scroll box, or text cut
# off); content elements (pre, tables, images, outputs, widget views, math) "spill" when they reach
# past the column's edges. (Inline math is left out of "cut off": the theme clips it to its line box,
# and MathJax's glyphs overhang that box by a few pixels without hiding anything.)
SIDEWAYS = """async () => {
  document.querySelectorAll('main details').forEach(d => { d.open = true; });
  await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
  const main = document.querySelector('main') || document.body;
  const area = main.querySelector('article') || main;
  const style = getComputedStyle(area);
  const box = area.getBoundingClientRect();
  const left = box.left + parseFloat(style.paddingLeft), right = box.right - parseFloat(style.paddingRight);
  const name = e => e.tagName.toLowerCase() + (typeof e.className === 'string' && e.className.trim()
      ? '.' + e.className.trim().split(/\\s+/).slice(0, 3).join('.') : '');
  const text = e => (e.innerText || e.textContent || e.getAttribute('alt') || '').replace(/\\s+/g, ' ').trim().slice(0, 90);
  const content = 'pre, table, img, svg, canvas, iframe, video, .cell_output, .output, .widget-subarea, '
      + '.jupyter-widgets, mjx-container, .math, .highlight';
  const sideways = [];
  for (const e of area.querySelectorAll('*')) {
    const r = e.getBoundingClientRect();
    if (r.width === 0 && r.height === 0) continue;  // not displayed
    const overflow = getComputedStyle(e).overflowX, wider = e.scrollWidth > e.clientWidth + 1;
    if (wider && (overflow === 'auto' || overflow === 'scroll'))
      sideways.push(`${name(e)} scrolls (${e.scrollWidth} px of content in ${e.clientWidth} px): ${text(e)}`);
    else if (wider && overflow !== 'visible' && e.matches(content) && !e.matches('.math'))
      sideways.push(`${name(e)} cuts off its content (${e.scrollWidth} px in ${e.clientWidth} px): ${text(e)}`);
    else if (e.matches(content) && (r.right > right + 1 || r.left < left - 1))
      sideways.push(`${name(e)} spills past the column (${Math.round(r.left)}-${Math.round(r.right)} px, `
          + `column ${Math.round(left)}-${Math.round(right)} px): ${text(e)}`);
  }
  // Text outputs laid out as columns (3 lines or more with 2 gaps of 2+ spaces each) that wrap:
  // every number shows, but the columns no longer line up.
  const text_tables = [];
  for (const p of main.querySelectorAll('.cell_output pre')) {
    const lines = p.innerText.replace(/\\n$/, '').split('\\n');
    const columns = lines.filter(l => (l.trim().match(/\\S {2,}(?=\\S)/g) || []).length >= 2).length;
    const cs = getComputedStyle(p), lineHeight = parseFloat(cs.lineHeight);
    if (columns < 3 || !lineHeight || !p.clientHeight) continue;
    const shown = Math.round((p.clientHeight - parseFloat(cs.paddingTop) - parseFloat(cs.paddingBottom)) / lineHeight);
    if (shown > lines.length) text_tables.push(`${lines.length} lines wrap onto ${shown}: ${text(p)}`);
  }
  const root = document.documentElement;
  return {
    sideways, text_tables,
    page_width: root.scrollWidth, window_width: root.clientWidth,
    column: Math.round(right - left),
    figures: [...main.querySelectorAll('.cell_output img')].map(i => {
      const code = i.closest('.cell') && i.closest('.cell').querySelector('.cell_input pre');
      return {
        name: (i.closest('.widget-output') ? 'the live plot' : 'the figure') + ' of the cell that starts '
            + JSON.stringify(code ? code.innerText.trim().slice(0, 70) : '?'),
        natural: i.naturalWidth, shown: i.getBoundingClientRect().width};
    }),
  };
}"""


@pytest.fixture(scope="module", params=PAGES)
def report(request, site: str, browser) -> Report:
    """Open one page with every off-site request refused; settle; look; take a screenshot."""
    page_name = request.param
    report = Report(page_name)
    page = browser.new_page(viewport={"width": 1280, "height": 900})

    def only_this_site(route) -> None:
        if route.request.url.startswith(site) or route.request.url.startswith("data:"):
            route.continue_()
        else:
            report.offsite.append(route.request.url)
            route.abort()

    page.route("**/*", only_this_site)
    page.on("pageerror", lambda error: report.errors.append(f"uncaught: {error}"))
    page.on("console", lambda m: report.errors.append(f"console: {m.text}")
            if m.type == "error" and m.text != THEME_FIRST_VISIT else None)
    page.on("response", lambda r: report.failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.on("requestfailed", lambda r: None if r.url in report.offsite else report.failed.append(f"failed {r.url}"))
    page.goto(site + page_name + ".html", wait_until="load")
    assert page.evaluate(SETTLE), f"{page_name}: the widget views did not all render"
    report.dom = page.evaluate(LOOK)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{pathlib.Path(page_name).name}.png"), full_page=True)
    report.dom.update(page.evaluate(SIDEWAYS))
    page.close()
    return report


def test_nothing_is_fetched_from_the_network(report: Report):
    assert report.offsite == [], f"{report.page} asked for {report.offsite[:5]}"


def test_every_resource_loads_and_no_script_fails(report: Report):
    assert report.failed == [], f"{report.page}: {report.failed[:5]}"
    assert report.errors == [], f"{report.page}: {report.errors[:5]}"


def test_every_figure_is_a_loaded_image(report: Report):
    figures, _, _ = saved_outputs(report.page)
    assert report.dom["broken_images"] == [], report.page
    assert report.dom["figure_text"] == 0, f"{report.page} shows '<Figure size ...>' text instead of a figure"
    html = (HTML / f"{report.page}.html").read_text()
    assert "<Figure size" not in html and "&lt;Figure size" not in html, f"{report.page}.html holds figure text"
    assert report.dom["figure_images"] == figures, f"{report.page}: {figures} PNG figures saved in the chapter"


def test_every_slider_panel_renders(report: Report):
    _, _, sliders = saved_outputs(report.page)
    assert report.dom["rendered_views"] == report.dom["widget_views"], report.page
    assert len(report.dom["sliders"]) == sliders, f"{report.page}: {sliders} sliders saved in the chapter"
    for slider in report.dom["sliders"]:
        assert slider["label"] and slider["readout"].isdigit() and slider["width"] > 100, (report.page, slider)
    shown = [(c["label"], c["buttons"], c["picked"]) for c in report.dom["choices"]]
    # the saved widget state keeps no page order: compare the rows of buttons as a set
    assert sorted(shown) == sorted((label, n, [picked]) for label, n, picked in saved_choices(report.page)), \
        report.page


def test_every_live_plot_shows_its_last_state(report: Report):
    _, live, _ = saved_outputs(report.page)
    shown = report.dom["live_images"]
    assert [image["src"] for image in shown] == live, f"{report.page}: live plots differ from their saved last state"
    assert all(image["width"] > 300 for image in shown), report.page


def test_math_is_typeset(report: Report):
    assert report.dom["raw_math"] == 0, f"{report.page} shows raw TeX delimiters"
    assert report.dom["math_errors"] == 0, report.page
    if report.dom["math_spans"]:
        assert report.dom["typeset"] >= report.dom["math_spans"], f"{report.page}: MathJax did not typeset the math"


def test_no_error_or_traceback_output(report: Report):
    assert report.dom["error_outputs"] == 0 and report.dom["traceback_text"] == 0, report.page


def test_nothing_scrolls_sideways(report: Report):
    """At 1280 px every output, listing, table, figure and widget fits the content column: a scroll box
    hides the end of its lines, and a reader who does not scroll never sees them."""
    dom = report.dom
    assert dom["page_width"] <= dom["window_width"] + 1, (
        f"{report.page} scrolls sideways: {dom['page_width']} px wide in a {dom['window_width']} px window")
    assert dom["sideways"] == [], f"{report.page}: {len(dom['sideways'])} elements scroll sideways:\n" + "\n".join(
        dom["sideways"][:12])


def test_every_slider_panel_says_it_needs_a_kernel(report: Report):
    """The panels render from saved state with no kernel behind them: each carries a visible note that
    sends the reader to Colab (the launch button's own URL), and nothing else carries one."""
    dom = report.dom
    assert len(dom["panels"]) == saved_panels(report.page), f"{report.page}: {saved_panels(report.page)} saved panels"
    for panel in dom["panels"]:
        assert panel["note"], f"{report.page}: the slider panel ({panel['controls']}) has no kernel note above it"
        assert panel["visible"], f"{report.page}: the kernel note above ({panel['controls']}) is not visible"
        assert "running kernel" in panel["note"] and "Colab" in panel["note"], (report.page, panel["note"])
        if dom["colab_button"]:
            assert panel["link"] == dom["colab_button"], f"{report.page}: the note links elsewhere than the launch button"
    assert dom["notes"] == len(dom["panels"]), f"{report.page}: {dom['notes']} kernel notes for {len(dom['panels'])} panels"


def test_every_figure_is_shown_at_its_drawn_size(report: Report):
    """tests/test_plots.py checks that every text of every figure is at least 9 pt (12 px) when the figure
    is shown at its drawn size, and that it is drawn no wider than the content column
    (plots.CONTENT_WIDTH_PX). Here: the page's column is that wide at 1280 px, and no figure (live
    plots included) is shrunk to fit, which would shrink its text below 9 pt."""
    from pidutils import plots

    dom = report.dom
    assert dom["column"] >= plots.CONTENT_WIDTH_PX, (
        f"{report.page}: the content column is {dom['column']} px at 1280 px, narrower than the "
        f"{plots.CONTENT_WIDTH_PX} px pidutils.plots draws for")
    shrunk = [f"{f['name']}: {f['natural']} px wide, shown at {f['shown']:.0f} px ({f['shown'] / f['natural']:.0%})"
              for f in dom["figures"] if f["natural"] and f["shown"] < f["natural"] - 1]
    assert shrunk == [], (f"{report.page}: figures shrunk to fit the {dom['column']} px column, so their text is "
                          f"smaller than drawn; redraw them (pidutils.plots draws at most {plots.CONTENT_WIDTH_PX} "
                          "px wide):\n" + "\n".join(shrunk))


def test_no_text_table_wraps(report: Report):
    """A table printed as aligned text wraps in the column and its columns stop lining up: print it as
    an HTML or Markdown table (IPython.display.Markdown or HTML) instead."""
    assert report.dom["text_tables"] == [], (
        f"{report.page}: text tables that wrap (render them as HTML or Markdown tables):\n"
        + "\n".join(report.dom["text_tables"][:12]))
