"""docs/annotated/ cannot go stale: it is what tools/annotate.py makes of the
sources now (regenerated here from the committed mathml.json, so without
latex2mathml), every equation of the paper, Eq. 1-14, has one anchor with its
typeset form, the README's paper-to-code table links each to it, and, where
chromium is installed, a browser lays every section out as notes beside code
with the equations typeset."""

import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("annotate", ROOT / "tools" / "annotate.py")
annotate = importlib.util.module_from_spec(spec)
spec.loader.exec_module(annotate)


def test_the_committed_pages_are_what_the_sources_give():
    pages = annotate.pages()
    committed = {path.name: path.read_text(encoding="utf-8") for path in annotate.OUT.iterdir()}
    stale = sorted(name for name in pages.keys() | committed.keys() if pages.get(name) != committed.get(name))
    assert not stale, f"docs/annotated/ differs from the sources in {stale}: run python tools/annotate.py"


def test_every_equation_has_one_anchor_and_is_typeset():
    anchors = {}
    for name, text in annotate.pages().items():
        for n, paragraph in re.findall(r'<p id="eq-(\d+)">(.*?)</p>', text, re.S):
            anchors.setdefault(int(n), []).append(name)
            assert re.sub(r"^<a [^>]*>(.*?)</a>", r"\1", paragraph).startswith(f"Eq. {n}") and "<math" in paragraph
    assert anchors == {n: [anchors[n][0]] for n in range(1, 15)}


def test_the_readme_links_each_equation_to_its_anchor():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme.split("## Paper to code", 1)[1].split("\n## ", 1)[0]
    links = re.findall(r"\]\(docs/annotated/(\w+\.html)#eq-(\d+)\)", table)
    assert sorted(int(n) for _, n in links) == list(range(1, 15))
    for page, n in links:
        assert f'id="eq-{n}"' in (annotate.OUT / page).read_text(encoding="utf-8"), f"{page}#eq-{n}"


SOURCE = '''"""The module's docstring."""

import torch


def scaled(x, k):
    """Scales x."""
    y = x * k  # (B, C)
    # Eq. 3: $y = k x$, the paper's notation
    return y
'''


def test_sections_notes_beside_the_code_they_explain():
    lines = SOURCE.splitlines()
    sections = [([(anchor, note) for anchor, note in notes], [lines[r - 1] for r in rows])
                for notes, rows in annotate.sections(SOURCE)]
    assert sections == [
        ([(None, ["The module's docstring."])], ["import torch"]),
        # A docstring comes before its def, inline comments stay in the code.
        ([(None, ["Scales x."])], ["def scaled(x, k):", "    y = x * k  # (B, C)"]),
        ([("eq-3", ["Eq. 3: $y = k x$, the paper's notation"])], ["    return y"]),
    ]
    known = {"y = k x": "<math>y</math>"}
    links = {"eq-3": "#eq-3", "k": "#k"}
    assert annotate.note_html("eq-3", ["Eq. 3: $y = k x$, `k` a scalar"], annotate.Typesetter(known), links) == (
        '<p id="eq-3"><a href="#eq-3">Eq. 3</a>: <math display="block">y</math></p>\n'
        '<p><a href="#k"><code>k</code></a> a scalar</p>\n<p class="paper">Paper: Section 3.1, Disentanglement Learning with Knowledge Distillation</p>')


def test_notes_link_equations_and_code_names_and_name_the_papers_section():
    links = annotate.targets()
    assert links["eq-9"] == "dis2.html#eq-9" and links["eq-14"] == "losses.html#eq-14"
    assert links["Decoder.forward"] == "dis2.html#Decoder.forward" and links["dis2_loss"] == "losses.html#dis2_loss"
    for name, text in annotate.pages().items():
        if name.endswith(".html") and name != "index.html":
            ids = set(re.findall(r'id="([^"]+)"', text))
            for href in re.findall(r'<a href="#([^"]+)"', text):
                assert href in ids, (name, href)
            # every note that names an equation names the paper's section too
            for notes in re.findall(r'<div class="notes">(.*?)</div>', text, re.S):
                if re.search(r">Eq\. \d+<", notes):
                    assert 'class="paper">Paper: Section 3.' in notes, notes[:200]


def test_an_equation_not_in_mathml_json_needs_latex2mathml_or_fails(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "latex2mathml", None)  # as if not installed
    with pytest.raises(SystemExit, match="pip install latex2mathml"):
        annotate.Typesetter({})("y = k x")


# What the browser lays out, measured in the page and written over it for --dump-dom to print.
MEASURE = """<script>
const box = e => e.getBoundingClientRect();
const sections = [...document.querySelectorAll("section")].filter(s => s.textContent.trim());
const beside = sections.filter(s => {
  const notes = box(s.querySelector(".notes")), code = box(s.querySelector(".code"));
  return notes.right <= code.left + 1 && Math.abs(notes.top - code.top) < 1;
});
const stacked = [...document.querySelectorAll("mfrac")].filter(f => box(f.children[0]).bottom <= box(f.children[1]).top + 1);
const lowered = [...document.querySelectorAll("msub")].filter(s => box(s.children[1]).bottom > box(s.children[0]).bottom);
const scrolling = [...document.querySelectorAll(".code, .notes pre, .notes math")].filter(
  c => c.scrollWidth > c.clientWidth + 1 || box(c).right > box(c.closest(".notes, .code")).right + 1);
const stacked_sections = sections.filter(s => box(s.querySelector(".notes")).bottom <= box(s.querySelector(".code")).top + 1);
document.body.textContent = JSON.stringify({sections: sections.length, beside: beside.length,
  scrolling: scrolling.length, stacked_sections: stacked_sections.length,
  fractions: document.querySelectorAll("mfrac").length, stacked: stacked.length,
  subscripts: document.querySelectorAll("msub").length, lowered: lowered.length});
</script>
"""


@pytest.mark.skipif(annotate.chromium() is None, reason="chromium is not installed (apt-get install chromium)")
@pytest.mark.parametrize("page", ["dis2.html", "losses.html"])
def test_a_browser_shows_notes_beside_code_and_typesets_the_equations(page, tmp_path):
    copy = tmp_path / page
    copy.write_text((annotate.OUT / page).read_text(encoding="utf-8").replace("</body>", MEASURE + "</body>"),
                    encoding="utf-8")
    dom = annotate.run_chromium("--window-size=1400,900", "--dump-dom", copy.as_uri())
    measured = json.loads(re.search(r"<body>(.*)</body>", dom, re.S)[1])
    assert measured["sections"] > 10 and measured["beside"] == measured["sections"], measured
    assert measured["subscripts"] > 5 and measured["lowered"] == measured["subscripts"], measured
    assert measured["stacked"] == measured["fractions"], measured
    assert measured["scrolling"] == 0, measured  # no code block scrolls sideways at 1400 px
    if page == "losses.html":  # Eq. 2
        assert measured["fractions"] >= 2, measured
    narrow = annotate.run_chromium("--window-size=800,900", "--dump-dom", copy.as_uri())
    measured = json.loads(re.search(r"<body>(.*)</body>", narrow, re.S)[1])
    assert measured["stacked_sections"] == measured["sections"] and measured["scrolling"] == 0, measured
