//! The file system, mounted for real by the daemon and used with the tools people use: ls, stat,
//! cat, cmp, find, cp -lr, ln, and a command script run inside a hard-linked input root.

mod common;

use clientd_digest::Digest;
use clientd_proto::build::bazel::remote::execution::v2 as re;
use common::{sha256, wait_for_mount, Clients, Daemon, Unmount};
use prost::Message;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn mounted(home: &Path, config: Option<&str>, extra: &[&str]) -> (Daemon, PathBuf, Unmount) {
    let mnt = home.join("mnt");
    let mnt_arg = mnt.to_str().unwrap().to_string();
    let mut args = vec!["--mount", mnt_arg.as_str()];
    args.extend_from_slice(extra);
    let daemon = Daemon::start(home, config, &args);
    wait_for_mount(&mnt);
    (daemon, mnt.clone(), Unmount(mnt))
}

/// Runs `script` with /bin/sh in `dir`: (success, stdout, stderr).
fn sh(dir: &Path, script: &str) -> (bool, String, String) {
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Like [`sh`], failing the test if the script fails.
fn ok(dir: &Path, script: &str) -> String {
    let (success, stdout, stderr) = sh(dir, script);
    assert!(success, "{script}\nstdout: {stdout}\nstderr: {stderr}");
    stdout
}

fn file(name: &str, digest: &Digest, executable: bool) -> re::FileNode {
    re::FileNode {
        name: name.into(),
        digest: Some(digest.to_proto()),
        is_executable: executable,
        ..Default::default()
    }
}

async fn upload(clients: &mut Clients, instance: &str, blobs: &[Vec<u8>]) {
    let entries: Vec<(Digest, Vec<u8>)> = blobs.iter().map(|b| (sha256(b), b.clone())).collect();
    assert!(clients
        .batch_update(instance, &entries)
        .await
        .iter()
        .all(|&code| code == 0));
}

/// An input root: a.txt, tool.sh (executable), link -> a.txt, sub/b.txt; its Tree; a Command.
struct Action {
    blobs: Vec<Vec<u8>>,
    a: Digest,
    tool: Digest,
    root: Digest,
    tree: Digest,
    command: Digest,
}

fn action() -> Action {
    let a = b"alpha\n".to_vec();
    let b = b"beta\n".to_vec();
    let tool = b"#!/bin/sh\necho \"ran with $GREETING\"\n".to_vec();
    let sub = re::Directory {
        files: vec![file("b.txt", &sha256(&b), false)],
        ..Default::default()
    };
    let sub_bytes = sub.encode_to_vec();
    let root = re::Directory {
        files: vec![
            file("a.txt", &sha256(&a), false),
            file("tool.sh", &sha256(&tool), true),
        ],
        directories: vec![re::DirectoryNode {
            name: "sub".into(),
            digest: Some(sha256(&sub_bytes).to_proto()),
        }],
        symlinks: vec![re::SymlinkNode {
            name: "link".into(),
            target: "a.txt".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let root_bytes = root.encode_to_vec();
    let tree_bytes = re::Tree {
        root: Some(root),
        children: vec![sub],
    }
    .encode_to_vec();
    let command_bytes = re::Command {
        arguments: vec![
            "/bin/sh".into(),
            "-c".into(),
            "cat ../a.txt ../sub/b.txt > out/result.txt && ../tool.sh >> out/result.txt".into(),
        ],
        environment_variables: vec![re::command::EnvironmentVariable {
            name: "GREETING".into(),
            value: "it's quoted".into(),
        }],
        output_paths: vec!["out/result.txt".into()],
        working_directory: "work".into(),
        ..Default::default()
    }
    .encode_to_vec();
    Action {
        a: sha256(&a),
        tool: sha256(&tool),
        root: sha256(&root_bytes),
        tree: sha256(&tree_bytes),
        command: sha256(&command_bytes),
        blobs: vec![a, b, tool, sub_bytes, root_bytes, tree_bytes, command_bytes],
    }
}

#[tokio::test]
async fn cas_shows_files_directories_trees_and_runnable_commands() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, mnt, _unmount) = mounted(dir.path(), None, &[]);
    let action = action();
    upload(&mut daemon.clients().await, "local/x", &action.blobs).await;
    let blobs = "cas/local/x/blobs/sha256";
    let name = |d: &Digest| d.file_name();

    // Files and executables: content, modes, sizes; cmp against a copy on disk.
    std::fs::write(dir.path().join("a.copy"), "alpha\n").unwrap();
    let out = ok(
        &mnt,
        &format!(
            "cat {blobs}/file/{a} && stat -c '%a %s %F' {blobs}/file/{a} {blobs}/executable/{t} \
             && cmp {blobs}/file/{a} ../a.copy",
            a = name(&action.a),
            t = name(&action.tool)
        ),
    );
    assert_eq!(
        out,
        format!(
            "alpha\n444 6 regular file\n555 {} regular file\n",
            action.tool.size()
        )
    );

    // A Directory and the same tree from a Tree message, listed by find.
    let listing = |kind: &str, digest: &Digest| {
        ok(
            &mnt,
            &format!("cd {blobs}/{kind}/{} && find . | sort", name(digest)),
        )
    };
    let expected = ".\n./a.txt\n./link\n./sub\n./sub/b.txt\n./tool.sh\n";
    assert_eq!(listing("directory", &action.root), expected);
    assert_eq!(listing("tree", &action.tree), expected);
    let out = ok(
        &mnt,
        &format!(
            "cd {blobs}/directory/{} && readlink link && cat sub/b.txt && cat link",
            name(&action.root)
        ),
    );
    assert_eq!(out, "a.txt\nbeta\nalpha\n");

    // Missing and malformed names: ENOENT, never a hang or a crash; cas/ lists nothing.
    let missing = sha256(b"never uploaded");
    for path in [
        format!("{blobs}/file/{}", name(&missing)),
        format!("{blobs}/directory/{}", name(&missing)),
        format!("{blobs}/file/not-a-digest"),
        format!("{blobs}/nosuchkind/{}", name(&action.a)),
        "cas/local/x/blobs/nosuchfunction".to_string(),
        // An instance name the gRPC front refuses: the local blob is not shown under it.
        format!("cas/nosuch/x/blobs/sha256/file/{}", name(&action.a)),
    ] {
        let (success, _, stderr) = sh(&mnt, &format!("stat {path}"));
        assert!(
            !success && stderr.contains("No such file"),
            "{path}: {stderr}"
        );
    }
    // cas/ files are immutable: chown to another owner is refused like other changes.
    let (success, _, stderr) = sh(
        &mnt,
        &format!("chown 12345 {blobs}/file/{}", name(&action.a)),
    );
    assert!(
        !success && stderr.contains("Operation not permitted"),
        "{stderr}"
    );
    // A blob that is not a Directory: EINVAL.
    let (success, _, stderr) = sh(&mnt, &format!("ls {blobs}/directory/{}", name(&action.a)));
    assert!(!success && stderr.contains("Invalid argument"), "{stderr}");
    assert_eq!(ok(&mnt, "ls -A cas | wc -l"), "0\n");
    // blobs/ lists the digest functions the instance offers (the local cache: all of clientd's),
    // each function its kinds; instance-name levels stay lookup only.
    assert_eq!(
        ok(&mnt, "ls cas/local/x/blobs"),
        "blake3\nmd5\nsha1\nsha256\nsha256tree\nsha384\nsha512\n"
    );
    // A SHA256TREE blob (five chunks: a two-level tree) under its function's directory.
    let tree = clientd_digest::DigestFunction::Sha256Tree;
    let data = common::pseudo_random(5, 4 * 1024 + 1);
    let mut clients = daemon.clients().await;
    let digest = clients.upload_as("local/x", tree, &data).await;
    std::fs::write(dir.path().join("tree.copy"), &data).unwrap();
    ok(
        &mnt,
        &format!(
            "cmp cas/local/x/blobs/sha256tree/file/{} ../tree.copy",
            name(&digest)
        ),
    );
    assert_eq!(
        ok(&mnt, "ls cas/local/x/blobs/sha256"),
        "command\ndirectory\nexecutable\nfile\ntree\n"
    );
    assert_eq!(ok(&mnt, "ls -A cas/local/x | wc -l"), "0\n");

    // cp -lr of the input root into scratch/, then the command script reproduces the action.
    let input = format!("{blobs}/directory/{}", name(&action.root));
    ok(&mnt, &format!("cp -lr {input} scratch/in"));
    assert_eq!(ok(&mnt, "stat -c '%a %h' scratch/in/tool.sh"), "555 9999\n");
    let script = mnt.join(blobs).join("command").join(name(&action.command));
    let text = std::fs::read_to_string(&script).unwrap();
    assert!(text.starts_with("#!/bin/sh\nset -e\n"), "{text}");
    ok(&mnt.join("scratch/in"), &shell_quote(&script));
    assert_eq!(
        std::fs::read_to_string(mnt.join("scratch/in/work/out/result.txt")).unwrap(),
        "alpha\nbeta\nran with it's quoted\n"
    );
    // Hard links into scratch/ stay read-only: writing through one fails.
    ok(
        &mnt,
        &format!(
            "ln {blobs}/file/{} scratch/a-link && cat scratch/a-link",
            name(&action.a)
        ),
    );
    let (success, _, stderr) = sh(&mnt, "echo more >> scratch/a-link");
    assert!(!success, "{stderr}");
    assert_eq!(
        std::fs::read_to_string(mnt.join("scratch/a-link")).unwrap(),
        "alpha\n"
    );

    assert!(daemon.stop().success());
    assert!(!mnt.join("scratch").exists(), "still mounted after SIGTERM");
}

fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.display())
}

#[tokio::test]
async fn scratch_is_an_ordinary_writable_directory_that_starts_empty() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, mnt, _unmount) = mounted(dir.path(), None, &[]);
    let scratch = mnt.join("scratch");
    let out = ok(
        &scratch,
        "set -e
         printf 'hello world' > f
         truncate -s 5 f && cat f && echo
         mkdir -p d/e && mv f d/e/g && cat d/e/g && echo
         ln -s e/g d/link && readlink d/link && cat d/link && echo
         ln d/e/g hard && stat -c %h hard
         chmod 700 hard && stat -c %a d/e/g
         touch -d '2001-02-03 04:05:06 UTC' hard && stat -c %Y d/e/g
         rm d/e/g hard d/link && rmdir d/e d
         ls -A | wc -l
         echo x > y && mv y z && ls && rm z
         df --output=size . | tail -1 | tr -d ' '",
    );
    assert_eq!(
        out,
        "hello\nhello\ne/g\nhello\n2\n700\n981173106\n0\nz\n10485760\n"
    );
    let (success, _, stderr) = sh(&scratch, "mkdir d && touch d/x && rmdir d");
    assert!(!success && stderr.contains("not empty"), "{stderr}");
    // Outside scratch/ nothing can be created.
    let (success, _, _) = sh(&mnt, "touch cas/x || touch outputs/x || mkdir newdir");
    assert!(!success);

    // A restart empties scratch/; a crash leaves a stale mount that the next start cleans up.
    assert!(daemon.stop().success());
    let (daemon, mnt, _unmount) = mounted(dir.path(), None, &[]);
    assert_eq!(ok(&mnt, "ls -A scratch | wc -l"), "0\n");
    ok(&mnt, "echo x > scratch/x");
    daemon.kill9();
    let (daemon, mnt, _unmount) = mounted(dir.path(), None, &[]);
    assert!(daemon.log().contains("still mounted"), "{}", daemon.log());
    assert_eq!(ok(&mnt, "ls -A scratch | wc -l"), "0\n");
    assert!(daemon.stop().success());
}

#[tokio::test]
async fn cluster_blobs_are_fetched_on_first_read_and_a_stuck_cluster_gives_eio() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Daemon::start(&dir.path().join("up"), None, &[]);
    // A cluster that accepts connections and never answers.
    let stuck = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let stuck_port = stuck.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for connection in stuck.incoming() {
            held.push(connection);
        }
    });
    let up = format!("up.example.com=unix:{}", upstream.socket.display());
    let hang = format!("stuck.example.com=grpc://127.0.0.1:{stuck_port}");
    let config = r#"{"mount": {"fetch_timeout_seconds": 3}}"#;
    let (proxy, mnt, _unmount) = mounted(
        &dir.path().join("proxy"),
        Some(config),
        &["--cluster", &up, "--cluster", &hang],
    );
    let data = common::pseudo_random(7, 3 << 20);
    let digest = sha256(&data);
    upstream
        .clients()
        .await
        .write("local/x", &data, 1 << 20)
        .await
        .unwrap();
    let path = mnt.join(format!(
        "cas/up.example.com/local/x/blobs/sha256/file/{}",
        digest.file_name()
    ));
    assert!(std::fs::read(&path).unwrap() == data);
    assert!(std::fs::read(&path).unwrap() == data);
    // A cluster's blobs/ lists what its Capabilities offer (this one is a clientd: all of them).
    assert_eq!(
        ok(&mnt, "ls cas/up.example.com/local/x/blobs"),
        "blake3\nmd5\nsha1\nsha256\nsha256tree\nsha384\nsha512\n"
    );

    // The stuck cluster (a blob not in the local CAS): the lookup fails with EIO after the
    // timeout, and meanwhile other calls are answered at once.
    let stuck_path = mnt.join(format!(
        "cas/stuck.example.com/blobs/sha256/file/{}",
        sha256(b"only the stuck cluster has it").file_name()
    ));
    let start = Instant::now();
    let waiting = std::thread::spawn(move || std::fs::metadata(stuck_path));
    std::thread::sleep(Duration::from_millis(500));
    let quick = Instant::now();
    ok(
        &mnt,
        &format!("ls scratch && cmp {} {}", path.display(), path.display()),
    );
    assert!(
        quick.elapsed() < Duration::from_secs(2),
        "{:?}",
        quick.elapsed()
    );
    let err = waiting.join().unwrap().unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    assert!(proxy.stop().success());
}
