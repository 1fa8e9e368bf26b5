"""The family keys and facts, under the name earlier code and the tests import them by.

Everything about a family lives in its description (model/families/); Family is the set of
built-in keys and FamilyFacts the published values a description holds.
"""

from __future__ import annotations

from streamconv.model.families.description import FamilyFacts
from streamconv.model.families.names import Family

__all__ = ["Family", "FamilyFacts"]
