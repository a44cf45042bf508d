"""Item formats of docs/api.md, checked without torch (the web tier validates with this)."""

from __future__ import annotations

from typing import Any


def validate_items(items: Any, what: str = "items") -> list[dict[str, Any]]:
    """Check the item formats of docs/api.md; raise ValueError naming the first bad item."""
    if not isinstance(items, list | tuple):
        raise ValueError(f"{what} must be a list of items")
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValueError(f"{what}[{i}] must be an object")
        if "text" in item:
            if not isinstance(item["text"], str) or not item["text"].strip():
                raise ValueError(f"{what}[{i}].text must be a non-empty string")
        elif "question" in item and "answer" in item:
            for key in ("question", "answer"):
                if not isinstance(item[key], str) or not item[key].strip():
                    raise ValueError(f"{what}[{i}].{key} must be a non-empty string")
        else:
            raise ValueError(f"{what}[{i}] needs either 'text' or 'question' and 'answer'")
    return list(items)
