"""
Tell whether a string needs Jinja at all.

A batch's ``edits`` are rendered again each time the task resumes; most of their strings hold no
template syntax, and compiling each as a template is most of that cost.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import jinja2


def has_template_syntax(text: str, env: jinja2.Environment) -> bool:
    """
    Tell whether ``text`` holds any of ``env``'s template delimiters (so rendering could change it).

    The environment's own delimiters count (a DAG may change them), and its line statement and line
    comment prefixes when set. Without any, Jinja would return the text unchanged (but for one
    trailing newline, which is kept here).

    :param text: the string to render.
    :param env: the Jinja environment it would be rendered in.
    """
    markers = (
        env.block_start_string,
        env.variable_start_string,
        env.comment_start_string,
        env.line_statement_prefix,
        env.line_comment_prefix,
    )
    return any(marker and marker in text for marker in markers)
