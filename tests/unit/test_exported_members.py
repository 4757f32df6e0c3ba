"""The public API is what `__all__` says, sorted, and each name really exists."""

import moderator
import moderator.embed
import moderator.policy


def test_all_lists_are_sorted_and_importable() -> None:
    for module in (moderator, moderator.embed, moderator.policy):
        names = list(module.__all__)
        assert names == sorted(names, key=str.lower) or names == sorted(names), module.__name__
        for name in names:
            assert hasattr(module, name), f"{module.__name__}.{name}"


def test_top_level_api_is_small() -> None:
    assert set(moderator.__all__) == {"__version__", "load_model"}
