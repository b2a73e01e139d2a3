"""A rule producing a tree artifact (a directory output), like code generators do."""

def _generated_sources_impl(ctx):
    out = ctx.actions.declare_directory(ctx.label.name)
    ctx.actions.run_shell(
        outputs = [out],
        inputs = [ctx.file.spec],
        command = """
set -e
mkdir -p "$1/include"
while read -r name value; do
  printf '#define %s %s\\n' "$name" "$value" > "$1/include/$name.h"
done < "$2"
echo "generated from $2" > "$1/README"
""",
        arguments = [out.path, ctx.file.spec.path],
        mnemonic = "GenerateSources",
    )
    return [DefaultInfo(files = depset([out]))]

generated_sources = rule(
    implementation = _generated_sources_impl,
    doc = "One header per line of `spec` (`NAME VALUE`), plus a README, in one directory.",
    attrs = {"spec": attr.label(allow_single_file = True, mandatory = True)},
)
