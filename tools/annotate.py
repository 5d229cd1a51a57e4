"""
Writes docs/annotated/: dis2.py and losses.py as pages to read beside the
paper, in the manner of the labml.ai annotated implementations. Each file is
cut into sections; a section's notes (its comments and docstrings) stand on
the left, the code they explain on the right. The paper's equations are
written once, in the source, as LaTeX between $...$ in the `# Eq. N:`
comments, and typeset as MathML, which browsers render without script or
network. The first `# Eq. N:` comment of a file gets the anchor #eq-N.

    python tools/annotate.py                 # writes docs/annotated/
    python tools/annotate.py --screenshot    # and docs/annotated.png (needs chromium)

latex2mathml (pip install latex2mathml) converts the LaTeX. Only the pages
need it, so it is not in requirements.txt. Its output is kept in
docs/annotated/mathml.json and reused, so the pages are regenerated without
it while no equation changes: that is how tests/test_annotate.py checks that
the committed pages are what the sources give. Delete an entry (or the file)
to have it converted anew.
"""

import argparse
import ast
import html
import io
import json
import keyword
import re
import shutil
import subprocess
import tempfile
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "annotated"
SOURCES = ("dis2.py", "losses.py")
MATHML = "mathml.json"
SCREENSHOT = ROOT / "docs" / "annotated.png"
EQUATION = re.compile(r"Eq\. (\d+)[^:.]*:")  # "Eq. 7:", "Eq. 11, l < L:"; not "Eq. 4 distils ..."
INLINE = re.compile(r"\$([^$]+)\$|`([^`]+)`")
# A fresh profile each run, and nothing that reaches the network.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars")
# Python 3.12 tokenizes an f-string into parts: a keyword inside one stays plain, as 3.11 leaves it.
FSTRING = {getattr(tokenize, "FSTRING_START", -1): 1, getattr(tokenize, "FSTRING_END", -1): -1}

STYLE = """
body { margin: 0; font: 15px/1.5 "DejaVu Sans", sans-serif; color: #222; }
header { padding: 10px 24px; border-bottom: 1px solid #ddd; }
section { display: flex; }
.notes { flex: 0 0 38%; min-width: 0; box-sizing: border-box; padding: 2px 24px; overflow-wrap: anywhere; }
.notes pre { overflow-x: auto; font-size: 12px; }
.code { flex: 1; min-width: 0; margin: 0; padding: 6px 16px; background: #f5f6f8; overflow-x: auto;
        font: 13px/1.45 "DejaVu Sans Mono", monospace; }
.c { color: #6a737d; } .k { color: #a626a4; }
.notes p, .notes pre { margin: 6px 0 12px; }
h2 { font-size: 1.25em; margin: 24px 0 6px; }
math { font: 1.15em "STIX Two Math", "STIX Math", "Latin Modern Math", "Cambria Math", "DejaVu Math TeX Gyre", math;
       math-style: normal; }  /* a font with math tables places the scripts; fractions full size, as in the paper */
:target { background: #fff5c0; }
main { padding: 0 24px; }
table { border-collapse: collapse; } td { padding: 4px 12px; border-bottom: 1px solid #eee; }
"""


class Typesetter:
    """LaTeX -> MathML: from the committed mathml.json, else by latex2mathml.
    `used` keeps what the pages need, which is what mathml.json is rewritten to."""

    def __init__(self, known):
        self.known, self.used = known, {}

    def __call__(self, latex):
        if latex not in self.known:
            try:
                from latex2mathml.converter import convert
            except ImportError:
                raise SystemExit(f"${latex}$ is new: pip install latex2mathml, then run python tools/annotate.py") from None
            self.known[latex] = convert(latex)
        self.used[latex] = self.known[latex]
        return self.used[latex]


def highlighted(source):
    """Each line of `source` as HTML, its comments and keywords in spans."""
    starts = [0]
    for line in source.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    parts, done, fstring = [], 0, 0
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        fstring += FSTRING.get(tok.type, 0)
        keyword_name = tok.type == tokenize.NAME and keyword.iskeyword(tok.string) and not fstring
        if tok.type == tokenize.COMMENT or keyword_name:
            start, end = (starts[row - 1] + col for row, col in (tok.start, tok.end))
            parts += [html.escape(source[done:start]), f'<span class="{"k" if keyword_name else "c"}">',
                      html.escape(tok.string), "</span>"]
            done = end
    return "".join([*parts, html.escape(source[done:])]).split("\n")


def pieces(source):
    """The file in reading order, as ("note", anchor, lines) and ("code", row).
    A docstring is a note that comes before the `def` or `class` lines it
    documents, so that they share a section. A run of full-line comments is a
    note; a `# Eq. N:` comment opens a note of its own, anchored if it is the
    file's first for N."""
    lines = source.splitlines()
    comments = {tok.start[0]: tok.string[1:].removeprefix(" ")
                for tok in tokenize.generate_tokens(io.StringIO(source).readline)
                if tok.type == tokenize.COMMENT and not tok.line[:tok.start[1]].strip()}
    docstrings = {}  # first row of what it documents -> (the docstring's first and last row, its text)
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and ast.get_docstring(node):
            doc = node.body[0]
            start = doc.lineno if isinstance(node, ast.Module) else min(x.lineno for x in [node, *node.decorator_list])
            docstrings[start] = (doc.lineno, doc.end_lineno, ast.get_docstring(node))
    row, anchored = 1, set()
    while row <= len(lines):
        if row in docstrings:
            first, last, text = docstrings[row]
            yield "note", None, text.splitlines()
            yield from (("code", r) for r in range(row, first))
            row = last + 1
        elif row in comments:
            equation = EQUATION.match(comments[row])
            anchor = f"eq-{equation[1]}" if equation and equation[1] not in anchored else None
            if equation:
                anchored.add(equation[1])
            note = [comments[row]]
            row += 1
            while row in comments and not EQUATION.match(comments[row]):
                note.append(comments[row])
                row += 1
            yield "note", anchor, note
        else:
            yield "code", row
            row += 1


def sections(source):
    """(notes, code rows) in the labml.ai manner: a note that follows code opens a new section."""
    lines, result = source.splitlines(), []
    for kind, *value in pieces(source):
        if not result or kind == "note" and any(lines[r - 1].strip() for r in result[-1][1]):
            result.append(([], []))
        notes, code = result[-1]
        if kind == "note":
            notes.append(value)
        elif code or lines[value[0] - 1].strip():  # blank lines before a section's code are dropped
            code.append(value[0])
    for _, code in result:  # and those after it
        while code and not lines[code[-1] - 1].strip():
            code.pop()
    return result


def inline(text, typeset):
    """Escaped text with $LaTeX$ typeset and `code` in <code>."""
    out, done = [], 0
    for match in INLINE.finditer(text):
        latex, code = match.groups()
        out += [html.escape(text[done:match.start()]), typeset(latex) if latex else f"<code>{html.escape(code)}</code>"]
        done = match.end()
    return "".join([*out, html.escape(text[done:])])


def note_html(anchor, lines, typeset):
    """A note's paragraphs (split at blank lines; the first carries the
    anchor), an indented paragraph as preformatted text, a comment ruled
    with dashes as a heading."""
    paragraphs = [p.splitlines() for p in re.split(r"\n\s*\n", "\n".join(lines).strip("\n")) if p.strip()]
    out = []
    for i, paragraph in enumerate(paragraphs):
        id_ = f' id="{anchor}"' if anchor and i == 0 else ""
        if set(paragraph[0]) == {"-"}:
            out.append(f"<h2{id_}>{inline(' '.join(paragraph[1:]), typeset)}</h2>")
        elif all(line.startswith("    ") for line in paragraph):
            text = "\n".join(line[4:] for line in paragraph)
            out.append(f"<pre{id_}>{html.escape(text)}</pre>")
        else:
            text = " ".join(line.strip() for line in paragraph)
            out.append(f"<p{id_}>{inline(text, typeset)}</p>")
    return "\n".join(out)


def document(title, header, body):
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{title}</title>\n'
            f"<style>{STYLE}</style>\n</head>\n<body>\n<header>{header}</header>\n{body}\n</body>\n</html>\n")


def annotated(name, typeset, equations):
    """The page of one source file; adds its anchored equations to `equations` (N -> (page, its MathML))."""
    source = (ROOT / name).read_text(encoding="utf-8")
    code_lines, page = highlighted(source), name.replace(".py", ".html")
    body = []
    for notes, rows in sections(source):
        for anchor, lines in notes:
            latex = anchor and re.search(r"\$([^$]+)\$", " ".join(line.strip() for line in lines))
            if latex:
                equations[int(anchor[3:])] = (page, typeset(latex[1]))
        notes_html = "\n".join(note_html(anchor, lines, typeset) for anchor, lines in notes)
        code = "\n".join(code_lines[r - 1] for r in rows)
        body.append(f'<section>\n<div class="notes">\n{notes_html}\n</div>\n<pre class="code">{code}</pre>\n</section>')
    header = (f'<a href="index.html">DIS2, annotated</a> / <b>{name}</b>, generated from {name} by '
              f"<code>python tools/annotate.py</code>: edit the source, not this page")
    return page, document(f"{name}: DIS2, annotated", header, "\n".join(body))


def summary(name):
    """The first paragraph of a source file's docstring."""
    return ast.get_docstring(ast.parse((ROOT / name).read_text(encoding="utf-8"))).split("\n\n")[0]


def index(equations, typeset):
    files = "\n".join(f'<tr><td><a href="{name.replace(".py", ".html")}">{name}</a></td>'
                      f"<td>{inline(summary(name), typeset)}</td></tr>" for name in SOURCES)
    rows = "\n".join(f'<tr><td><a href="{page}#eq-{n}">Eq. {n}</a></td><td>{mathml}</td></tr>'
                     for n, (page, mathml) in sorted(equations.items()))
    body = (f"<main>\n<h2>Files</h2>\n<table>\n{files}\n</table>\n"
            f"<h2>Equations, where the code computes them</h2>\n<table>\n{rows}\n</table>\n</main>")
    return document("DIS2, annotated", "<b>DIS2, annotated</b>: the code beside the paper's equations, "
                    "generated by <code>python tools/annotate.py</code>", body)


def pages():
    """File name -> text of everything docs/annotated/ holds."""
    path = OUT / MATHML
    typeset = Typesetter(json.loads(path.read_text(encoding="utf-8")) if path.exists() else {})
    equations, result = {}, {}
    for name in SOURCES:
        page, text = annotated(name, typeset, equations)
        result[page] = text
    result["index.html"] = index(equations, typeset)
    result[MATHML] = json.dumps(dict(sorted(typeset.used.items())), indent=1, ensure_ascii=False) + "\n"
    return result


def chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser")


def run_chromium(*args):
    """Headless chromium on `args`, with a profile of its own; its stdout."""
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=120, check=True).stdout


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Write docs/annotated/: dis2.py and losses.py, notes and typeset "
                                            "equations beside the code.")
    p.add_argument("--screenshot", action="store_true",
                   help=f"also write {SCREENSHOT.relative_to(ROOT)}, dis2.html from Eq. 9 on in headless chromium")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    written = pages()
    OUT.mkdir(parents=True, exist_ok=True)
    for stale in {p.name for p in OUT.iterdir()} - set(written):
        (OUT / stale).unlink()
    for name, text in written.items():
        (OUT / name).write_text(text, encoding="utf-8")
    print(f"{OUT.relative_to(ROOT)}: {', '.join(written)} ({sum(map(len, written.values())) // 1024} KiB)")
    if args.screenshot:
        if not chromium():
            raise SystemExit("--screenshot needs chromium (apt-get install chromium)")
        # Headless chromium ignores a #fragment here, so a copy hides the sections above Eq. 9's.
        from_eq9 = ("section { display: none; } section:has(+ section #eq-9), section:has(#eq-9), "
                    "section:has(#eq-9) ~ section { display: flex; }</style>")
        with tempfile.TemporaryDirectory() as folder:
            page = Path(folder) / "dis2.html"
            page.write_text(written["dis2.html"].replace("</style>", from_eq9, 1), encoding="utf-8")
            run_chromium("--window-size=1400,900", f"--screenshot={SCREENSHOT}", page.as_uri())
        print(SCREENSHOT.relative_to(ROOT))


if __name__ == "__main__":
    main()
