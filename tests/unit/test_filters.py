"""filters.py by tables: rclone's glob semantics, first match wins, the prefix, and the
rules that are refused."""

from __future__ import annotations

import re

import pytest

from replicator.filters import EVERYTHING, KeyFilter, Rule, parse_rules


def keys_filter(*rules: str, prefix: str = "") -> KeyFilter:
    return KeyFilter(prefix, parse_rules(rules))


# (rules, key, included?): one pattern's matches, after rclone's docs/content/filtering.md.
CASES = [
    # Unanchored: a complete trailing run of path elements.
    (["- file.jpg"], "file.jpg", False),
    (["- file.jpg"], "directory/file.jpg", False),
    (["- file.jpg"], "afile.jpg", True),
    (["- file.jpg"], "directory/afile.jpg", True),
    (["- b/x.tmp"], "a/b/x.tmp", False),
    (["- b/x.tmp"], "ab/x.tmp", True),
    (["- b/x.tmp"], "b/x.tmp", False),
    # Anchored at the key's start.
    (["- /file.jpg"], "file.jpg", False),
    (["- /file.jpg"], "directory/file.jpg", True),
    (["- /file.jpg"], "afile.jpg", True),
    # * stops at '/'; ** doesn't.
    (["- *.jpg"], "file.jpg", False),
    (["- *.jpg"], "directory/file.jpg", False),
    (["- *.jpg"], "file.jpg/anotherfile.png", True),
    (["- *.tmp"], "a/b/x.tmp", False),
    (["- /*.tmp"], "a/b/x.tmp", True),
    (["- /*.tmp"], "x.tmp", False),
    (["- dir/**"], "dir/file.jpg", False),
    (["- dir/**"], "dir/dir1/dir2/file.jpg", False),
    (["- dir/**"], "directory/file.jpg", True),
    (["- dir/**"], "adir/file.jpg", True),
    (["- dir/**"], "x/dir/file.jpg", False),  # unanchored: any dir/ in the key
    (["- /dir/**"], "x/dir/file.jpg", True),
    (["- /dir/**"], "dir/", False),  # the folder marker too
    (["- /**"], "anything/at/all", False),
    (["- **"], "", False),
    (["- /a/**/z"], "a/b/c/z", False),
    (["- /a/**/z"], "a/z", True),  # '**/' needs a '/' of its own, as in rclone
    # ? is one character but '/'.
    (["- l?ss"], "less", False),
    (["- l?ss"], "lass", False),
    (["- l?ss"], "floss", True),
    (["- /a?b"], "a/b", True),
    # Classes, negated classes, POSIX names; escapes.
    (["- [a-c]x"], "bx", False),
    (["- [a-c]x"], "dx", True),
    (["- [^a-c]x"], "dx", False),
    (["- [^a-c]x"], "bx", True),
    (["- [[:digit:]][[:digit:]].log"], "logs/42.log", False),
    (["- [[:digit:]][[:digit:]].log"], "logs/4x.log", True),
    (["- []x]"], "]", False),
    (["- [a-]"], "-", False),
    (["- [&&]"], "&", False),  # Python's set operators mean nothing in a class
    (["- \\*"], "*", False),
    (["- \\*"], "x", True),
    (["- a\\?"], "ab", True),
    # Alternatives, nested too; every other character is literal.
    (["- *.{jpg,png}"], "a/b.png", False),
    (["- *.{jpg,png}"], "a/b.gif", True),
    (["- /{a,b/{c,d}}/**"], "b/d/x", False),
    (["- /{a,b/{c,d}}/**"], "b/e/x", True),
    (["- a,b"], "a,b", False),
    (["- a.b"], "axb", True),
    (["- (a|b)+$"], "x/(a|b)+$", False),
    (["- é/日本/*"], "é/日本/語", False),
    (["- *"], "line\nbreak", False),
    (["- /dir/**"], "dir/line\nbreak", False),  # ** crosses a newline too (rclone's doesn't)
    # First match wins; no match: included (rclone's --filter has no implicit rule).
    (["- *.tmp", "+ /photos/**", "- **"], "photos/a.jpg", True),
    (["- *.tmp", "+ /photos/**", "- **"], "photos/a.tmp", False),
    (["- *.tmp", "+ /photos/**", "- **"], "music/a.mp3", False),
    (["+ /photos/**", "- *.tmp"], "photos/a.tmp", True),
    (["+ /photos/**", "- *.tmp"], "music/a.tmp", False),
    (["+ /photos/**", "- *.tmp"], "music/a.mp3", True),
    (["+ *.jpg"], "music/a.mp3", True),  # an include alone excludes nothing
    ([], "anything", True),
]


@pytest.mark.parametrize(("rules", "key", "included"), CASES,
                         ids=[f"{' '.join(r) or 'none'} : {k!r}" for r, k, _ in CASES])
def test_rules(rules, key, included):
    assert keys_filter(*rules)(key) is included


@pytest.mark.parametrize(
    ("prefix", "rules", "key", "included"),
    [
        ("photos/", [], "photos/a.jpg", True),
        ("photos/", [], "photos/", True),
        ("photos/", [], "photos", False),
        ("photos/", [], "music/a.mp3", False),
        ("photos/", [], "x/photos/a.jpg", False),
        ("photos", [], "photos-old/a.jpg", True),  # a prefix, not a directory
        # Rules see the whole key, the prefix included.
        ("photos/", ["- /photos/raw/**"], "photos/raw/a.nef", False),
        ("photos/", ["- /photos/raw/**"], "photos/a.jpg", True),
        ("photos/", ["- /raw/**"], "photos/raw/a.nef", True),
        # Outside the prefix, an include rule doesn't bring a key back.
        ("photos/", ["+ **"], "music/a.mp3", False),
    ],
)
def test_prefix(prefix, rules, key, included):
    assert keys_filter(*rules, prefix=prefix)(key) is included


def test_everything_is_only_no_prefix_and_no_rules():
    assert EVERYTHING.everything and KeyFilter() == EVERYTHING
    assert not KeyFilter("a/").everything
    assert not keys_filter("+ **").everything
    assert EVERYTHING("any/key")


def test_filters_compare_by_prefix_and_rules():
    assert keys_filter("- *.tmp", prefix="a/") == KeyFilter("a/", (Rule(False, "*.tmp"),))
    assert hash(keys_filter("- *.tmp")) == hash(KeyFilter("", (Rule(False, "*.tmp"),)))
    assert keys_filter("- *.tmp") != keys_filter("+ *.tmp")


def test_parse_rules_reads_rclone_filter_files():
    text = """
        # a comment
        ; another, as rclone allows
        - *.tmp
        +   /photos/**
        -\t**
    """
    assert parse_rules(text.split("\n")) == (Rule(False, "*.tmp"), Rule(True, "/photos/**"), Rule(False, "**"))
    assert str(keys_filter("- *.tmp", "+ /photos/**", prefix="p")) == "prefix 'p'; - *.tmp; + /photos/**"
    assert str(EVERYTHING) == "everything"


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("*.tmp", "expected '+ pattern' (include) or '- pattern' (exclude)"),
        ("+*.tmp", "expected '+ pattern'"),
        ("x *.tmp", "expected '+ pattern'"),
        ("+", "empty pattern"),
        ("-   ", "empty pattern"),
        ("!", "'!' (clear the rules so far) is not supported"),
        ("- cache/", "write 'cache/**' for the keys under it"),
        ("- ***", "too many stars"),
        ("- a]", "mismatched ']'"),
        ("- [a", "mismatched '[' and ']'"),
        ("- {a,b", "mismatched '{' and '}'"),
        ("- a}", "mismatched '{' and '}'"),
        ("- {{.*}}", "{{regexp}} sections are not supported"),
        ("- [[:vowel:]]", "unknown character class '[:vowel:]'"),
        ("- [z-a]", "bad pattern '[z-a]'"),
        ("- a\\", "ends with an escaping '\\'"),
    ],
)
def test_bad_rules_are_refused_by_name(line, why):
    with pytest.raises(ValueError, match=re.escape(why)) as caught:
        parse_rules(["- fine", line])
    assert f"rule {line.strip()!r}" in str(caught.value)  # the bad rule, named


def test_a_bad_rule_cannot_be_made():
    with pytest.raises(ValueError, match="empty pattern"):
        Rule(True, "")
