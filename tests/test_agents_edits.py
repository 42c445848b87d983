"""Applying edits: search/replace blocks and unified diffs, as models and tools write them."""

from __future__ import annotations

import pytest

from arl.agents.edits import EditError, apply_search_replace, apply_unified_diff
from arl.ledger.programs import unified_diff

TRAIN = b'''"""A recipe."""

LR = 0.1
STEPS = 100


def main():
    for step in range(STEPS):
        loss = step * LR
    print(loss)


if __name__ == "__main__":
    main()
'''

BASE = {"train.py": TRAIN, "NOTES.md": b"Notes.\n", "data/spec.py": b"FILE = 'x'\n"}


@pytest.mark.parametrize(
    "child",
    [
        {**BASE, "train.py": TRAIN.replace(b"LR = 0.1", b"LR = 0.2")},
        {**BASE, "train.py": TRAIN.replace(b"LR = 0.1", b"LR = 0.2").replace(b"print(loss)", b"print(loss, LR)")},
        {**BASE, "train.py": b"# head\n" + TRAIN + b"# tail\n", "NOTES.md": b"New notes.\nMore.\n"},
        {**BASE, "extra/new.py": b"X = 1\nY = 2\n"},
        {k: v for k, v in BASE.items() if k != "NOTES.md"},
        {**BASE, "NOTES.md": b"no newline at the end"},
        {**BASE, "empty.txt": b""},
        {**BASE, "train.py": b""},
        {**BASE, "train.py": TRAIN.replace(b"    main()\n", b"    main()")},
    ],
    ids=["one-line", "two-hunks", "both-ends-two-files", "new-file", "deleted-file",
         "no-newline", "new-empty-file", "emptied-file", "newline-removed"],
)
def test_unified_diff_round_trip(child):
    assert apply_unified_diff(BASE, unified_diff(BASE, child)) == child


def test_newline_added_back_round_trip():
    parent = {"a.txt": b"one\ntwo"}
    child = {"a.txt": b"one\ntwo\n"}
    assert apply_unified_diff(parent, unified_diff(parent, child)) == child


def test_hunk_with_wrong_header_counts_and_lines_is_located_by_context():
    diff = """Here is my change:
```diff
--- a/train.py
+++ b/train.py
@@ -40,7 +40,9 @@ def main():
 def main():
     for step in range(STEPS):
-        loss = step * LR
+        loss = step * LR * 0.5
+        # halved
     print(loss)
```
That should help.
"""
    out = apply_unified_diff(BASE, diff)
    assert b"        loss = step * LR * 0.5\n        # halved\n    print(loss)" in out["train.py"]
    assert out["NOTES.md"] == BASE["NOTES.md"]


def test_plain_diff_without_prefixes_and_missing_space_on_blank_context_and_trailing_spaces():
    diff = (
        "--- train.py\t2026-01-01 00:00:00\n"
        "+++ train.py\t2026-01-01 00:00:01\n"
        "@@ -2,4 +2,4 @@\n"
        "\n"                      # blank context line without its leading space
        "-LR = 0.1   \n"          # trailing spaces the file does not have
        "+LR = 0.3\n"
        " STEPS = 100\n"
        "\n"
    )
    out = apply_unified_diff(BASE, diff)
    assert out["train.py"] == TRAIN.replace(b"LR = 0.1", b"LR = 0.3")


def test_missing_no_newline_marker_keeps_the_files_ending():
    parent = {"a.txt": b"one\ntwo"}
    diff = "--- a/a.txt\n+++ b/a.txt\n@@ -1,2 +1,2 @@\n one\n-two\n+three\n"
    assert apply_unified_diff(parent, diff) == {"a.txt": b"one\nthree"}


def test_hunk_header_without_numbers_and_two_files():
    diff = (
        "--- a/NOTES.md\n+++ b/NOTES.md\n@@ @@\n-Notes.\n+Better notes.\n"
        "--- a/train.py\n+++ b/train.py\n@@ -1 +1 @@\n-STEPS = 100\n+STEPS = 200\n"
    )
    out = apply_unified_diff(BASE, diff)
    assert out["NOTES.md"] == b"Better notes.\n"
    assert b"STEPS = 200\n" in out["train.py"]


def test_nearest_match_to_the_header_wins_when_context_repeats():
    parent = {"f.txt": b"x\ny\nx\ny\nx\ny\n"}
    diff = "--- a/f.txt\n+++ b/f.txt\n@@ -5,2 +5,2 @@\n x\n-y\n+z\n"
    assert apply_unified_diff(parent, diff) == {"f.txt": b"x\ny\nx\ny\nx\nz\n"}


@pytest.mark.parametrize(
    "diff, message",
    [
        ("--- a/train.py\n+++ b/train.py\n@@ -1,2 +1,2 @@\n-LR = 0.5\n+LR = 0.6\n",
         "hunk 1 of train.py does not apply"),
        ("--- a/train.py\n+++ b/train.py\n@@ -3 +3 @@\n-LR = 0.1\n+LR = 0.2\n"
         "@@ -9 +9 @@\n-    nothing here\n+    x\n", "hunk 2 of train.py does not apply"),
        ("--- a/../etc/passwd\n+++ b/../etc/passwd\n@@ -1 +1 @@\n-a\n+b\n", "path traversal"),
        ("--- /etc/passwd\n+++ /etc/passwd\n@@ -1 +1 @@\n-a\n+b\n", "path traversal"),
        ("--- a/missing.py\n+++ b/missing.py\n@@ -1 +1 @@\n-a\n+b\n", "missing.py, which is not a file"),
        ("--- /dev/null\n+++ b/NOTES.md\n@@ -0,0 +1 @@\n+x\n", "creates NOTES.md, which already exists"),
        ("I think we should raise the learning rate.", "the diff has no file changes"),
        ("@@ -1 +1 @@\n-a\n+b\n", "comes before any '--- a/FILE'"),
        ("diff --git a/m.bin b/m.bin\nBinary files a/m.bin and b/m.bin differ\n", "binary change"),
    ],
    ids=["context-absent", "second-hunk", "dotdot", "absolute", "unknown-file", "create-existing",
         "prose", "headerless-hunk", "binary"],
)
def test_diffs_that_do_not_apply(diff, message):
    with pytest.raises(EditError, match=message.replace("(", r"\(").replace(".", r"\.")):
        apply_unified_diff(BASE, diff)


def test_search_replace_edits_creates_and_forgives_trailing_whitespace():
    out = apply_search_replace(BASE, [
        ("train.py", "LR = 0.1", "LR = 0.05"),
        ("train.py", "STEPS = 100  \n", "STEPS = 300\n"),  # trailing spaces not in the file
        ("new/notes.txt", "", "hello\n"),
    ])
    assert b"LR = 0.05\nSTEPS = 300\n" in out["train.py"]
    assert out["new/notes.txt"] == b"hello\n"
    assert BASE["train.py"] == TRAIN  # the input is not modified


@pytest.mark.parametrize(
    "blocks, message",
    [
        ([("train.py", "LR = 9", "LR = 1")], "block 1 of train.py: the search text is not found"),
        ([("NOTES.md", "Notes.", "N."), ("train.py", "    ", "\t")], "block 2 of train.py: the search text occurs"),
        ([("nope.py", "x", "y")], "block 1: nope.py is not a file of the program"),
        ([("train.py", "", "x")], "block 1: empty search text for the existing file train.py"),
        ([("../outside.py", "", "x")], "path traversal"),
        ([("/abs.py", "", "x")], "path traversal"),
        ([("", "", "x")], "path traversal"),
    ],
    ids=["absent", "ambiguous", "unknown-file", "empty-search", "dotdot", "absolute", "empty-path"],
)
def test_search_replace_failures_name_the_block_and_file(blocks, message):
    with pytest.raises(EditError, match=message):
        apply_search_replace(BASE, blocks)


def test_binary_file_cannot_be_edited_as_text():
    with pytest.raises(EditError, match="blob.bin is not UTF-8 text"):
        apply_search_replace({"blob.bin": b"\xff\xfe"}, [("blob.bin", "a", "b")])
