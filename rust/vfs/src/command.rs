//! `cas/.../command/<digest>`: a REv2 Command as a `/bin/sh` script that reproduces the action.
//!
//! Run inside a copy of the action's input root (for example a `cp -lr` of its
//! `directory/<digest>` into `scratch/`), the script creates the output directories, enters the
//! working directory, sets the environment and runs the arguments, exactly quoted.

use clientd_proto::build::bazel::remote::execution::v2::Command;
use std::collections::BTreeSet;

/// The script for `command`.
pub fn script(command: &Command) -> String {
    let mut out = String::from("#!/bin/sh\nset -e\n");
    let working = command.working_directory.trim_end_matches('/');
    let within = |path: &str| {
        if working.is_empty() {
            path.to_string()
        } else {
            format!("{working}/{path}")
        }
    };
    // Output paths are relative to the working directory; their parents must exist. Clients
    // before REAPI 2.1 (Bazel 4) fill the deprecated output_files and output_directories instead.
    #[allow(deprecated)]
    let outputs = command
        .output_paths
        .iter()
        .chain(&command.output_files)
        .chain(&command.output_directories);
    let parents: BTreeSet<String> = outputs
        .filter_map(|path| path.rsplit_once('/').map(|(parent, _)| within(parent)))
        .chain((!working.is_empty()).then(|| working.to_string()))
        .collect();
    for parent in &parents {
        out.push_str(&format!("mkdir -p {}\n", quote(parent)));
    }
    if !working.is_empty() {
        out.push_str(&format!("cd {}\n", quote(working)));
    }
    for variable in &command.environment_variables {
        // The whole assignment quoted: names and values are taken literally.
        let assignment = format!("{}={}", variable.name, variable.value);
        out.push_str(&format!("export {}\n", quote(&assignment)));
    }
    let arguments: Vec<String> = command.arguments.iter().map(|a| quote(a)).collect();
    out.push_str(&format!("exec {}\n", arguments.join(" ")));
    out
}

/// Single-quoted for `/bin/sh`: everything literal, `'` written as `'\''`.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clientd_proto::build::bazel::remote::execution::v2::command::EnvironmentVariable;

    #[test]
    fn script_reproduces_the_action() {
        let command = Command {
            arguments: vec![
                "/bin/sh".into(),
                "-c".into(),
                "echo 'hi' > out/a/x.txt".into(),
            ],
            environment_variables: vec![EnvironmentVariable {
                name: "PATH".into(),
                value: "/bin:/usr/bin".into(),
            }],
            output_paths: vec!["out/a/x.txt".into(), "top.txt".into()],
            working_directory: "pkg".into(),
            ..Default::default()
        };
        assert_eq!(
            script(&command),
            "#!/bin/sh\nset -e\nmkdir -p 'pkg'\nmkdir -p 'pkg/out/a'\ncd 'pkg'\n\
             export 'PATH=/bin:/usr/bin'\n\
             exec '/bin/sh' '-c' 'echo '\\''hi'\\'' > out/a/x.txt'\n"
        );
    }

    #[test]
    fn quoted_arguments_survive_the_shell() {
        let tricky = ["a b", "it's", "$HOME", "`x`", "\\", "\n", ""];
        let command = Command {
            arguments: ["printf", "%s|"]
                .iter()
                .chain(&tricky)
                .map(|s| s.to_string())
                .collect(),
            ..Default::default()
        };
        let output = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(script(&command))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8(output.stdout).unwrap(),
            tricky.iter().map(|s| format!("{s}|")).collect::<String>()
        );
    }
}
