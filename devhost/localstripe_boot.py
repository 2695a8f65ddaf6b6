"""Start localstripe in memory, with its store indexed by object type.

Run as a script (`python -P devhost/localstripe_boot.py --port N --from-scratch`: `-P` keeps devhost/http.py
from shadowing the standard library) by
`devhost.services.start_localstripe`; it imports nothing from this repository.

Two changes to how localstripe 1.15 runs, neither to what it answers:

- **No disk.** Its `Store` pickles every object to `/tmp/localstripe.pickle` on each write
  and a new server loads that file, so concurrent test stacks would share state. The dump
  is turned off; `--from-scratch` starts empty.
- **Lists by type.** `StripeObject._api_list_all` scans every key of the store for its
  type's prefix, and every charge a payment intent creates lists the refunds that way
  (`Charge.refunds`, exported into the `charge.succeeded` event). So one charge costs time
  in proportion to everything the server holds: 3.9 ms per payment intent with 3,800
  objects and 31 ms with 20,400 (measured in-process). A run of 10,000 customers becomes
  quadratic in localstripe, not in spendgate. Here the store keeps, beside itself, one
  dict per object type in the same insertion order, and the base `_api_list_all` reads
  that dict: the same objects in the same order, without the scan. Subclasses still filter
  and sort as before (they call the base method).
"""

from __future__ import annotations

from typing import Any

import localstripe.resources as resources

_by_type: dict[str, dict[str, Any]] = {}


def _kind(key: str) -> str:
    return key.split(":", 1)[0]


def _setitem(self: dict[str, Any], key: str, value: Any) -> None:
    dict.__setitem__(self, key, value)
    _by_type.setdefault(_kind(key), {})[key] = value


def _delitem(self: dict[str, Any], key: str) -> None:
    dict.__delitem__(self, key)
    _by_type.get(_kind(key), {}).pop(key, None)


def _clear(self: dict[str, Any]) -> None:
    dict.clear(self)
    _by_type.clear()


def _list_all(cls: Any, url: str, limit: Any = None, starting_after: Any = None, **kwargs: Any) -> Any:
    # The same contract as localstripe's own base method (resources.py, StripeObject._api_list_all).
    if kwargs:
        raise resources.UserError(400, "Unexpected " + ", ".join(kwargs.keys()))
    listed = resources.List(url, limit=limit, starting_after=starting_after)
    listed._list = list(_by_type.get(cls.object, {}).values())
    return listed


def install() -> None:
    """Patch localstripe's store and base list (before the server module imports the store)."""
    resources.Store.dump_to_disk = lambda self: None
    resources.Store.__setitem__ = _setitem
    resources.Store.__delitem__ = _delitem
    resources.Store.clear = _clear
    resources.StripeObject._api_list_all = classmethod(_list_all)
    for key, value in resources.store.items():
        _by_type.setdefault(_kind(key), {})[key] = value


if __name__ == "__main__":
    install()
    from localstripe.server import start

    start()
