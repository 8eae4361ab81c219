"""`confine` on the real filesystem: what a job may name inside the files folder, and the exact
message for everything it may not."""

from __future__ import annotations

from pathlib import Path

import pytest

from watcher.jobs.paths import PathRefused, confine

KEY = "parameters.path"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """The files folder, with a sibling folder `outside` holding a secret."""
    (tmp_path / "files" / "sub").mkdir(parents=True)
    (tmp_path / "files" / "sales.csv").write_text("a\n1\n")
    (tmp_path / "files" / "sub" / "q1.csv").write_text("a\n1\n")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("secret")
    return tmp_path / "files"


def refused(value: object, root: Path) -> str:
    with pytest.raises(PathRefused) as caught:
        confine(value, root, KEY)
    return str(caught.value)


# -- allowed ---------------------------------------------------------------------------------


def test_a_plain_file(root: Path) -> None:
    assert confine("sales.csv", root, KEY) == root / "sales.csv"


@pytest.mark.parametrize("value", ["sub/q1.csv", "sub\\q1.csv", "./sub//q1.csv"])
def test_a_nested_file_with_either_separator(root: Path, value: str) -> None:
    assert confine(value, root, KEY) == root / "sub" / "q1.csv"


def test_a_file_that_does_not_exist_yet(root: Path) -> None:
    assert confine("new/later.csv", root, KEY) == root / "new" / "later.csv"


def test_a_symlink_that_stays_inside_resolves_to_its_target(root: Path) -> None:
    (root / "latest.csv").symlink_to(root / "sub" / "q1.csv")
    (root / "current").symlink_to("sub")
    assert confine("latest.csv", root, KEY) == root / "sub" / "q1.csv"
    assert confine("current/q1.csv", root, KEY) == root / "sub" / "q1.csv"


def test_a_root_reached_through_a_symlink(root: Path, tmp_path: Path) -> None:
    (tmp_path / "files-link").symlink_to(root)
    assert confine("sales.csv", tmp_path / "files-link", KEY) == root / "sales.csv"


# -- refused -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["../outside/secret.txt", "sub/../../outside/secret.txt", "sub/..", "..\\x"]
)
def test_dot_dot_anywhere(root: Path, value: str) -> None:
    assert refused(value, root) == (
        f"{KEY}: must stay inside the files folder; {value!r} leads outside it"
    )


def test_dot_dot_is_refused_even_when_it_would_come_back_inside(root: Path) -> None:
    assert "leads outside it" in refused("sub/../sales.csv", root)


@pytest.mark.parametrize(
    "value",
    [
        "/etc/passwd",
        "//etc/passwd",
        "C:\\Windows\\win.ini",
        "C:/Windows/win.ini",
        "C:relative.csv",
        "\\\\server\\share\\x.csv",
        "\\\\?\\C:\\x.csv",
        "\\rooted.csv",
    ],
)
def test_absolute_posix_windows_drive_and_unc(root: Path, value: str) -> None:
    assert refused(value, root) == (
        f"{KEY}: must be relative to the files folder, not absolute, got {value!r}"
    )


def test_the_absolute_path_of_a_file_inside_is_refused_too(root: Path) -> None:
    assert "not absolute" in refused(str(root / "sales.csv"), root)


def test_a_symlinked_file_leading_outside(root: Path, tmp_path: Path) -> None:
    (root / "secret.csv").symlink_to(tmp_path / "outside" / "secret.txt")
    assert refused("secret.csv", root) == (
        f"{KEY}: must stay inside the files folder; 'secret.csv' leads outside it through a "
        "symbolic link"
    )


def test_a_dangling_symlink_leading_outside(root: Path, tmp_path: Path) -> None:
    (root / "later.csv").symlink_to(tmp_path / "outside" / "not-yet.txt")
    assert "through a symbolic link" in refused("later.csv", root)


def test_a_file_under_a_symlinked_folder_leading_outside(root: Path, tmp_path: Path) -> None:
    (root / "sub" / "elsewhere").symlink_to(tmp_path / "outside")
    assert refused("sub/elsewhere/secret.txt", root) == (
        f"{KEY}: must stay inside the files folder; 'sub/elsewhere/secret.txt' leads outside "
        "it through a symbolic link"
    )


def test_a_sibling_folder_sharing_the_roots_name_as_prefix(root: Path, tmp_path: Path) -> None:
    # `files-old` starts with `files`: only a comparison of whole path parts tells them apart.
    (tmp_path / "files-old").mkdir()
    (root / "old").symlink_to(tmp_path / "files-old")
    assert "through a symbolic link" in refused("old/x.csv", root)


@pytest.mark.parametrize(
    ("value", "shown"),
    [(42, "42"), (None, "null (an empty value)"), (["a.csv"], "a list ['a.csv']")],
)
def test_not_text(root: Path, value: object, shown: str) -> None:
    assert refused(value, root) == f"{KEY}: must be a path as text, got {shown}"


def test_empty(root: Path) -> None:
    assert refused("", root) == f"{KEY}: must be a path inside the files folder, got empty text"


def test_a_nul_byte(root: Path) -> None:
    assert refused("sales.csv\x00.txt", root) == (
        f"{KEY}: must not contain a NUL byte, got 'sales.csv\\x00.txt'"
    )
