"""Comment sections, named or recognised by their shape. `clean_tree`'s marking walk notes elements
named for comments and the post markers (dates, authors) of every element (`Comments`);
`select_main` turns them into comment blocks (`comment_blocks`), whose paragraphs score little and
which never join a chosen article, so a long discussion cannot outvote the story it discusses."""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

# Class/id words of comment sections: never put back, and their paragraphs barely score.
COMMENT_WORDS = ("comment", "disqus", "replies", "reply", "remark", "shoutbox", "discussion")
# Class/id words of bylines and user names: a comment post's author marker.
AUTHOR_WORDS = ("author", "byline", "username", "user-name", "vcard", "commenter", "poster")

# Comment threads without comment class names: a container with at least this many children of
# which most hold a date (`<time>`, `datetime=`) or an author marker — the shape of every
# comment system (WordPress, Disqus, Discourse, phpBB) whatever it calls its classes.
_THREAD_MIN_POSTS = 4
_THREAD_POST_SHARE = 0.6
_THREAD_MAX_UP = 6
TIME, AUTHOR = 1, 2  # what a post marker says: when, and who
COMMENT_SCORE_WEIGHT = 0.1  # a comment's paragraph scores a tenth of an article paragraph


@dataclass(slots=True)
class Comments:
    """What `clean_tree`'s marking walk (clean.py `_mark`) saw of comments: elements named for
    them, and the post markers (`<time>`, `datetime=`, author names) that reveal a thread whatever
    its classes say."""

    named: set[etree._Element]
    markers: list[tuple[etree._Element, int]]


def comment_blocks(body: etree._Element, seen: Comments) -> set[etree._Element]:
    """Roots of comment posts and threads: the elements named for comments, and the structural
    threads — a container with at least `_THREAD_MIN_POSTS` children of which most hold both a
    date and an author (every comment system's shape: WordPress, Disqus, Discourse, phpBB). A
    live blog's entries carry dates but no per-entry author, and stay article. Their paragraphs
    score little, and they are never added to a chosen article as siblings, so a long
    discussion cannot outvote the story it discusses; a page that is only a discussion keeps it
    (every candidate is discounted alike)."""
    out = set(seen.named)
    hits: dict[etree._Element, dict[etree._Element, int]] = {}
    for marker, kind in seen.markers:
        child, ancestor = marker, marker.getparent()
        for _ in range(_THREAD_MAX_UP):
            if ancestor is None or ancestor is body:
                break
            posts = hits.setdefault(ancestor, {})
            posts[child] = posts.get(child, 0) | kind
            child, ancestor = ancestor, ancestor.getparent()
    for container, posts in hits.items():
        full = sum(1 for kinds in posts.values() if kinds == TIME | AUTHOR)
        if full < _THREAD_MIN_POSTS:
            continue
        children = sum(1 for c in container if isinstance(c.tag, str))
        if full >= _THREAD_POST_SHARE * children:
            out.add(container)
    return out
