"""project_tree: expose files of a tree artifact (a directory output) as ordinary file outputs.

A tree artifact is a directory whose contents Bazel only learns when the producing action has
run. Rules that are not tree-aware cannot consume one, and any action that takes the whole tree
as an input re-runs whenever any file of it changes. `project_tree` names the files you care
about up front and gives each of them its own output file `<name>/<path>`, addressable as the
label `:<name>/<path>`:

```starlark
load("@clientd//rules:defs.bzl", "project_tree")

project_tree(
    name = "gen_srcs",
    src = ":codegen",  # a rule whose output is a directory (ctx.actions.declare_directory)
    paths = ["foo.cc", "sub/bar.cc"],
)

cc_library(
    name = "foo",
    srcs = [":gen_srcs/foo.cc"],  # an ordinary file, like a genrule output
)
```

Early cutoff. Bazel keys every action on the digests of its inputs. When the tree changes, the
projection action runs again (it is a copy: cheap), but a projected file whose bytes did not
change keeps its digest, so the actions that consume only that file are action-cache hits and
do not run again. Their sensitivity narrows from "anything in the tree" to "these bytes".

Copy, not symlink. The projected files are copies (`cp`), always:
  * `ctx.actions.symlink` needs a File as its target, and a file inside a tree artifact is not
    a File at analysis time;
  * a symlink made by the action itself (`ln -s`) is recorded by remote caching as an output
    symlink, which Bazel 4.2.3 refuses under `--remote_download_minimal` / `toplevel`
    ("Symlinks in action outputs are not yet supported": it warns and runs the action again
    locally on every cache hit), and which newer Bazels materialize differently for local and
    remote execution; an unresolved symlink (`ctx.actions.declare_symlink`) would make
    consumers depend on the whole tree again;
  * a hard link shares its inode with the tree member: linking changes the member's ctime,
    which Bazel's output checks can take for a modification of the tree, the inode belongs to
    the outputs of two actions, and it fails across file systems (e.g. `--sandbox_base` on
    tmpfs), so a copy would still be needed as the fallback.
A copy is a regular output file in every execution mode (local, sandboxed, remote, build
without the bytes) and costs one read and one write of the projected files only.

One action for all `paths` of a target: an action that takes a tree as an input gets every file
of the tree staged into its sandbox (or input root), so one action per path would cost
`len(paths)` times the tree's size in sandbox set-up. Early cutoff is per output file either way.

The action runs Bazel's shell (bash) and POSIX tools (cp; find, sed, sort, head, wc for the error
message): on Windows it needs MSYS2 bash, as genrules do.
"""

def _where(package, name):
    return "project_tree //%s:%s" % (package, name)

def check_paths(where, paths):
    """Fails unless `paths` is a non-empty list of distinct, relative, normalized paths.

    Args:
      where: the prefix of the error messages, naming the target.
      paths: the value of the `paths` attribute.
    """
    if type(paths) != type([]):
        fail("%s: paths must be a list of strings, got %s" % (where, type(paths)))
    if not paths:
        fail("%s: paths must not be empty: list the files of the tree to project" % where)
    seen = {}
    for i, path in enumerate(paths):
        what = "%s: paths[%d] = %r" % (where, i, path)
        if type(path) != type(""):
            fail("%s: paths must be strings" % what)
        if not path:
            fail("%s: an empty path names no file" % what)
        if path.startswith("/") or (len(path) >= 3 and path[1] == ":" and path[2] in "/\\"):
            fail("%s: paths are relative to the root of the tree artifact; absolute paths are not allowed" % what)
        if "\\" in path:
            fail("%s: use '/' as the separator" % what)
        if ":" in path:
            fail("%s: ':' cannot appear in the output's label" % what)
        if path.endswith("/"):
            fail("%s: a path must name a file, not end with '/'" % what)
        for part in path.split("/"):
            if part == "..":
                fail("%s: '..' components are not allowed (a path must stay inside the tree)" % what)
            if part == ".":
                fail("%s: '.' components are not allowed; write the path without them" % what)
            if not part:
                fail("%s: empty path component ('//'); write the path without it" % what)
        if path in seen:
            fail("%s: duplicate path (also paths[%d])" % (what, seen[path]))
        seen[path] = i

# $1 target label, $2 src label, $3 the tree's path, then pairs of (path in the tree, output).
_SCRIPT = """\
set -u
target=$1 src=$2 tree=$3
shift 3
status=0
while [ "$#" -ge 2 ]; do
    path=$1 out=$2
    shift 2
    if [ -f "$tree/$path" ]; then
        cp "$tree/$path" "$out" || {
            echo "project_tree $target: could not copy '$path' out of the tree artifact produced by $src" >&2
            status=1
        }
    elif [ -e "$tree/$path" ]; then
        echo "project_tree $target: path '$path' in the tree artifact produced by $src is not a regular file" >&2
        status=1
    else
        echo "project_tree $target: path '$path' is not in the tree artifact produced by $src" >&2
        status=1
    fi
done
if [ "$status" -ne 0 ]; then
    n=$(cd "$tree" && find -L . -type f | wc -l)
    echo "project_tree $target: the tree artifact $src has $n file(s); the first ones:" >&2
    (cd "$tree" && find -L . -type f | sed 's|^\\./|    |' | sort | head -n 20) >&2
fi
exit "$status"
"""

def _project_tree_impl(ctx):
    where = "project_tree %s" % ctx.label
    check_paths(where, ctx.attr.paths)
    outs = ctx.outputs.outs
    if len(outs) != len(ctx.attr.paths):
        fail("%s: outs and paths differ in length; use the project_tree macro" % where)

    src = ctx.attr.src
    trees = [f for f in src[DefaultInfo].files.to_list() if f.is_directory]
    if len(trees) != 1:
        fail("%s: src %s must produce exactly one tree artifact (a directory output), found %d among its files %s" % (
            where,
            src.label,
            len(trees),
            [f.short_path for f in src[DefaultInfo].files.to_list()],
        ))
    tree = trees[0]
    if tree.is_source:
        fail("%s: src %s is a source directory, not a tree artifact; refer to its files directly" % (where, src.label))

    args = [str(ctx.label), str(src.label), tree.path]
    for path, out in zip(ctx.attr.paths, outs):
        if not ("/" + out.short_path).endswith("/%s/%s" % (ctx.label.name, path)):
            fail("%s: output %s does not match path %r; use the project_tree macro" % (where, out.short_path, path))
        args.extend([path, out.path])

    ctx.actions.run_shell(
        inputs = [tree],
        outputs = outs,
        command = _SCRIPT,
        arguments = args,
        mnemonic = "ProjectTree",
        progress_message = "Projecting %d file(s) out of %s for %s" % (len(outs), src.label, ctx.label),
    )
    return [
        DefaultInfo(
            files = depset(outs),
            runfiles = ctx.runfiles(files = outs),
        ),
    ]

_project_tree = rule(
    implementation = _project_tree_impl,
    doc = "The rule behind the project_tree macro; use the macro, which derives outs from paths.",
    attrs = {
        "outs": attr.output_list(
            doc = "The outputs, `<name>/<path>` for each of paths, in the same order.",
            mandatory = True,
        ),
        "paths": attr.string_list(
            doc = "Relative paths of files inside the tree artifact.",
            mandatory = True,
        ),
        "src": attr.label(
            doc = "A target whose default outputs include exactly one tree artifact.",
            mandatory = True,
        ),
    },
)

def project_tree(name, src, paths, **kwargs):
    """Exposes files of a tree artifact as ordinary output files `<name>/<path>`.

    Each listed path becomes an output file of this target, addressable as the label
    `:<name>/<path>` (e.g. `srcs = [":gen/sub/b.txt"]`, `$(location :gen/sub/b.txt)`); the target
    `:<name>` itself provides all of them (DefaultInfo files and runfiles). A path missing from
    the tree fails the build with a message naming the path, this target and `src`.

    The files are copies (see the file's docstring for why not symlinks), made by one action
    that re-runs when the tree changes; consumers of a projected file whose content did not
    change are not re-executed (early cutoff).

    Args:
      name: the target name; also the directory of the outputs in the package.
      src: a target producing exactly one tree artifact (ctx.actions.declare_directory).
      paths: non-empty list of distinct paths relative to the tree's root, each naming a file:
        no absolute paths, no '..' or '.' components, no empty components, no trailing '/'.
      **kwargs: common attributes (visibility, tags, testonly, ...), passed to the rule; the
        outputs share its visibility.
    """
    check_paths(_where(native.package_name(), name), paths)
    _project_tree(
        name = name,
        src = src,
        paths = paths,
        outs = ["%s/%s" % (name, path) for path in paths],
        **kwargs
    )
