"""tools/mutants.py stays applicable: every mutant's text occurs exactly once in its file as it is now, so a
line rewritten since fails here instead of the mutant silently counting as not applicable, and every
file's tests exist."""

from pathlib import Path

import pytest

from tools import mutants

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("file", list(mutants.MUTANTS))
def test_every_mutant_applies_once_and_every_test_file_exists(file):
    source = (ROOT / file).read_text()
    for mutant in mutants.MUTANTS[file]:
        assert source.count(mutant.before) == 1, f"{file}: {mutant.slip}: its text is not found exactly once"
        assert mutant.after != mutant.before, f"{file}: {mutant.slip}"
    assert mutants.TESTS[file] and all((ROOT / test).is_file() for test in mutants.TESTS[file]), file


def test_the_eight_modules_of_issue_50_have_eight_mutants_or_more():
    for file in ("train.py", "evaluate.py", "data.py", "reproduce.py", "distributed.py", "runtime.py", "dis2.py",
                 "synth.py"):
        assert len(mutants.MUTANTS[file]) >= 8, file
