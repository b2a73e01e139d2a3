"""`clientd_command`: `bazel run` a clientd subcommand, e.g. `bazel run @clientd//:bazelrc`.

The launcher runs the daemon binary with the subcommand and the arguments given after `--`.
Under `bazel run` the working directory is the main repository's runfiles directory, where the
binary's runfiles path resolves for both the main repository and an external `@clientd`, and
BUILD_WORKSPACE_DIRECTORY names the user's workspace (where `clientd bazelrc` writes its file).
"""

def _clientd_command_impl(ctx):
    binary = ctx.executable.binary
    launcher = ctx.actions.declare_file(ctx.label.name + ".sh")
    ctx.actions.write(
        output = launcher,
        content = "#!/bin/sh\nexec './{binary}' '{command}' \"$@\"\n".format(
            binary = binary.short_path,
            command = ctx.attr.command,
        ),
        is_executable = True,
    )
    runfiles = ctx.runfiles(files = [binary]).merge(ctx.attr.binary[DefaultInfo].default_runfiles)
    return [DefaultInfo(executable = launcher, runfiles = runfiles)]

clientd_command = rule(
    implementation = _clientd_command_impl,
    doc = "Runs `<binary> <command> ARGS...` under `bazel run`.",
    attrs = {
        "binary": attr.label(
            doc = "The clientd binary.",
            executable = True,
            cfg = "target",
            mandatory = True,
        ),
        "command": attr.string(
            doc = "The subcommand, e.g. `bazelrc`.",
            mandatory = True,
        ),
    },
    executable = True,
)
