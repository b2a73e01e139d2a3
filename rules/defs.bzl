"""Public API of clientd's Bazel rules.

    load("@clientd//rules:defs.bzl", "project_tree")

See rules/README.md for usage and examples.
"""

load("//rules/private:project_tree.bzl", _project_tree = "project_tree")

project_tree = _project_tree
