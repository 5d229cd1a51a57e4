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
import builtins
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
INLINE = re.compile(r"\$([^$]+)\$|`([^`]+)`|\bEq\. (\d+)(?:-(\d+))?|\b([A-Z]\w+\.\w+)\b")
# The paper's section of each equation (paper/DIS2.md), named in the note that mentions it first.
PAPER_SECTIONS = {**{n: "Section 3.1, Disentanglement Learning with Knowledge Distillation" for n in range(1, 7)},
                  **{n: "Section 3.2, Hierarchical Hybrid Fusion; Figure 2" for n in (7, 8)},
                  **{n: "Section 3.3, Classwise Feature Learning Module" for n in range(9, 14)},
                  14: "Section 3.3, the total loss"}
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
.notes pre { white-space: pre-wrap; font-size: 12px; }
.code { flex: 1; min-width: 0; margin: 0; padding: 6px 16px; background: #f5f6f8; overflow-x: auto;
        font: 13px/1.45 "DejaVu Sans Mono", monospace; white-space: pre-wrap; }
.code .line { display: block; padding-left: 4ch; text-indent: -4ch; }  /* a wrapped line hangs */
.c { color: #6a737d; } .k { color: #a626a4; } .s { color: #22863a; } .n { color: #b45f06; }
.f { color: #005cc5; font-weight: bold; } .b { color: #6f42c1; }
.paper { color: #555; font-size: 0.9em; }
math[display="block"] { margin: 6px 0; max-width: 100%; overflow-x: auto; }
@media (max-width: 1000px) { section { display: block; } .notes { padding: 2px 16px; } }
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


BUILTINS = set(dir(builtins))
STRING_PARTS = {tokenize.STRING, getattr(tokenize, "FSTRING_START", -1), getattr(tokenize, "FSTRING_MIDDLE", -1),
                getattr(tokenize, "FSTRING_END", -1)}


def token_class(tok, previous, fstring):
    """The span class of a token: comment, keyword, string, number, a name being defined, a builtin."""
    if tok.type == tokenize.COMMENT:
        return "c"
    if tok.type in STRING_PARTS:
        return "s"
    if fstring:
        return None
    if tok.type == tokenize.NUMBER:
        return "n"
    if tok.type == tokenize.NAME:
        if keyword.iskeyword(tok.string):
            return "k"
        if previous in ("def", "class"):
            return "f"
        if tok.string in BUILTINS:
            return "b"
    return None


def highlighted(source):
    """Each line of `source` as HTML, its comments, keywords, strings, numbers, defined names and
    builtins in spans (a span never crosses a line)."""
    starts = [0]
    for line in source.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    parts, done, fstring, previous = [], 0, 0, ""
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        fstring += FSTRING.get(tok.type, 0)
        kind = token_class(tok, previous, fstring and tok.type not in STRING_PARTS)
        if tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
            previous = tok.string
        if kind:
            start, end = (starts[row - 1] + col for row, col in (tok.start, tok.end))
            text = html.escape(source[start:end]).replace("\n", f'</span>\n<span class="{kind}">')
            parts += [html.escape(source[done:start]), f'<span class="{kind}">', text, "</span>"]
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


def inline(text, typeset, links=None):
    """Escaped text with $LaTeX$ typeset, `code` in <code>, and "Eq. N" and the code's names linked
    to their anchors where `links` ({"eq-N" or name: href}) has them."""
    links = links or {}
    link = lambda key, shown: f'<a href="{links[key]}">{shown}</a>' if key in links else shown
    out, done = [], 0
    for match in INLINE.finditer(text):
        latex, code, first, last, dotted = match.groups()
        if latex:
            shown = typeset(latex)
        elif code:
            shown = link(code, f"<code>{html.escape(code)}</code>")
        elif first:
            shown = link(f"eq-{first}", f"Eq. {first}") + (f"-{link(f'eq-{last}', last)}" if last else "")
        else:
            shown = link(dotted, html.escape(dotted))
        out += [html.escape(text[done:match.start()]), shown]
        done = match.end()
    return "".join([*out, html.escape(text[done:])])


def paper_section(lines):
    """The paper's section of the first equation a note names, as a line to show under it, or ""."""
    mentioned = re.search(r"\bEq\. (\d+)", " ".join(lines))
    section = mentioned and PAPER_SECTIONS.get(int(mentioned[1]))
    return f'<p class="paper">Paper: {section}</p>' if section else ""


def note_html(anchor, lines, typeset, links=None):
    """A note's paragraphs (split at blank lines; the first carries the
    anchor), an indented paragraph as preformatted text, a comment ruled
    with dashes as a heading. A paragraph that opens "Eq. N: $...$" displays
    that equation; a note naming an equation ends with the paper's section."""
    # A comment line that ends on a formula, followed by one that opens a sentence: two paragraphs.
    lines = [x for i, line in enumerate(lines)
             for x in ([line, ""] if line.rstrip().endswith("$") and i + 1 < len(lines)
                       and lines[i + 1].strip()[:1].isupper() else [line])]
    text = "\n".join(lines).strip("\n")
    paragraphs = [p.splitlines() for p in re.split(r"\n\s*\n", text) if p.strip()]
    out = []
    for i, paragraph in enumerate(paragraphs):
        id_ = f' id="{anchor}"' if anchor and i == 0 else ""
        if set(paragraph[0]) == {"-"}:
            out.append(f"<h2{id_}>{inline(' '.join(paragraph[1:]), typeset, links)}</h2>")
        elif all(line.startswith("    ") for line in paragraph):
            text = "\n".join(line[4:] for line in paragraph)
            out.append(f"<pre{id_}>{html.escape(text)}</pre>")
        else:
            text = " ".join(line.strip() for line in paragraph)
            shown = inline(text, typeset, links)
            if re.match(EQUATION.pattern + r"\s*\$", text):  # "Eq. N: $...$": the equation displayed
                math = re.search(r"<math[^>]*>", shown)
                if math:
                    tag = re.sub(r' display="\w+"', "", math[0]).replace("<math", '<math display="block"', 1)
                    end = shown.index("</math>", math.end()) + len("</math>")
                    rest = re.sub(r"^[.,;]?\s*", "", shown[end:])  # what follows starts a paragraph
                    shown = shown[:math.start()] + tag + shown[math.end():end]
                    if rest:
                        shown += f"</p>\n<p>{rest[:1].upper()}{rest[1:]}"
            out.append(f"<p{id_}>{shown}</p>")
    return "\n".join([*out, paper_section(lines)]).strip("\n")


def document(title, header, body):
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{title}</title>\n'
            f"<style>{STYLE}</style>\n</head>\n<body>\n<header>{header}</header>\n{body}\n</body>\n</html>\n")


def definitions(source):
    """First row of each class and function (decorators included) -> its qualified name."""
    names = {}

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef)):
                names[min(x.lineno for x in [child, *child.decorator_list])] = prefix + child.name
                visit(child, prefix + child.name + ".")

    visit(ast.parse(source), "")
    return names


def targets():
    """What notes link to: "eq-N" -> the page of its anchor, and each class and function of the
    sources (and a method's bare name where only one has it) -> its section."""
    links, methods = {}, {}
    for name in SOURCES:
        source, page = (ROOT / name).read_text(encoding="utf-8"), name.replace(".py", ".html")
        for line in source.splitlines():
            equation = EQUATION.match(line.strip().removeprefix("# "))
            if equation:
                links.setdefault(f"eq-{equation[1]}", f"{page}#eq-{equation[1]}")
        for qualified in definitions(source).values():
            links[qualified] = f"{page}#{qualified}"
            methods.setdefault(qualified.rsplit(".", 1)[-1], set()).add(links[qualified])
    links.update({short: next(iter(hrefs)) for short, hrefs in methods.items() if len(hrefs) == 1 and short not in links})
    return links


def annotated(name, typeset, equations, links=None):
    """The page of one source file; adds its anchored equations to `equations` (N -> (page, its MathML))."""
    source = (ROOT / name).read_text(encoding="utf-8")
    code_lines, page, defined = highlighted(source), name.replace(".py", ".html"), definitions(source)
    links = {k: v.removeprefix(page) for k, v in (links or {}).items()}  # same page: the bare #anchor
    body = []
    for notes, rows in sections(source):
        for anchor, lines in notes:
            latex = anchor and re.search(r"\$([^$]+)\$", " ".join(line.strip() for line in lines))
            if latex:
                equations[int(anchor[3:])] = (page, typeset(latex[1]))
        notes_html = "\n".join(note_html(anchor, lines, typeset, links) for anchor, lines in notes)
        anchor = lambda r: f' id="{defined[r]}"' if r in defined else ""  # a class or function: linked to
        code = "".join(f'<span class="line"{anchor(r)}>{code_lines[r - 1] or " "}</span>' for r in rows)
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
    equations, result, links = {}, {}, targets()
    for name in SOURCES:
        page, text = annotated(name, typeset, equations, links)
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
