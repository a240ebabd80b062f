//! cloud-sink/Dockerfile checked without a Docker engine: every instruction is one Docker
//! knows, stages are named and referenced correctly, the build is of this crate, and the
//! runtime stage runs as a non-root user the binary it starts.

use std::collections::BTreeSet;
use std::path::Path;

const INSTRUCTIONS: &[&str] = &[
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// One instruction: keyword (upper case), arguments, and the line it started on.
#[derive(Debug)]
struct Instruction {
    keyword: String,
    args: String,
    line: usize,
}

/// Joins continuation lines and drops comments and blank lines, as the Dockerfile parser does.
fn instructions(text: &str) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && pending.is_none()) {
            continue;
        }
        let (continues, body) = match trimmed.strip_suffix('\\') {
            Some(body) => (true, body.trim_end()),
            None => (false, trimmed),
        };
        let (start, mut joined) = pending.take().unwrap_or((i + 1, String::new()));
        if !joined.is_empty() {
            joined.push(' ');
        }
        joined.push_str(body);
        if continues {
            pending = Some((start, joined));
            continue;
        }
        let (keyword, args) = joined
            .split_once(char::is_whitespace)
            .unwrap_or((&joined, ""));
        out.push(Instruction {
            keyword: keyword.to_owned(),
            args: args.trim().to_owned(),
            line: start,
        });
    }
    assert!(
        pending.is_none(),
        "the Dockerfile ends inside a continued line"
    );
    out
}

fn flag<'a>(args: &'a str, name: &str) -> Option<&'a str> {
    args.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("--{name}=")))
}

fn json_array(args: &str, what: &str) -> Vec<String> {
    let value: serde_json::Value = serde_json::from_str(args)
        .unwrap_or_else(|e| panic!("{what} is not in exec (JSON) form: {args:?}: {e}"));
    value
        .as_array()
        .unwrap_or_else(|| panic!("{what} is not a JSON array"))
        .iter()
        .map(|v| {
            v.as_str()
                .unwrap_or_else(|| panic!("{what} has a non-string"))
                .to_owned()
        })
        .collect()
}

#[test]
fn the_dockerfile_parses_and_its_runtime_stage_is_small_and_non_root() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile");
    let text = std::fs::read_to_string(&path).expect("cloud-sink/Dockerfile is missing");
    let all = instructions(&text);
    assert!(!all.is_empty(), "no instructions");

    let mut stages: Vec<(String, Vec<&Instruction>)> = Vec::new();
    for ins in &all {
        assert_eq!(
            ins.keyword,
            ins.keyword.to_uppercase(),
            "line {}: write instructions in upper case",
            ins.line
        );
        assert!(
            INSTRUCTIONS.contains(&ins.keyword.as_str()),
            "line {}: unknown instruction {}",
            ins.line,
            ins.keyword
        );
        assert!(
            !ins.args.is_empty(),
            "line {}: {} without arguments",
            ins.line,
            ins.keyword
        );
        if ins.keyword == "FROM" {
            let words: Vec<&str> = ins
                .args
                .split_whitespace()
                .filter(|w| !w.starts_with("--"))
                .collect();
            let name = match words.as_slice() {
                [_image] => format!("{}", stages.len()),
                [_image, as_kw, name] if as_kw.eq_ignore_ascii_case("AS") => (*name).to_owned(),
                _ => panic!(
                    "line {}: FROM must be `FROM image [AS name]`: {}",
                    ins.line, ins.args
                ),
            };
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c)),
                "line {}: stage name {name:?} must be lower case",
                ins.line
            );
            assert!(
                stages.iter().all(|(n, _)| *n != name),
                "line {}: stage {name} defined twice",
                ins.line
            );
            stages.push((name, Vec::new()));
            continue;
        }
        match stages.last_mut() {
            Some((_, body)) => body.push(ins),
            None => assert_eq!(
                ins.keyword, "ARG",
                "line {}: only ARG may precede the first FROM",
                ins.line
            ),
        }
    }
    assert!(
        stages.len() >= 2,
        "expected a multi-stage build, found {} stage(s)",
        stages.len()
    );

    let mut defined = BTreeSet::new();
    for (name, body) in &stages {
        for ins in body {
            if let Some(from) = flag(&ins.args, "from") {
                assert!(
                    ins.keyword == "COPY" || ins.keyword == "ADD",
                    "line {}: --from on {}",
                    ins.line,
                    ins.keyword
                );
                assert!(
                    defined.contains(from),
                    "line {}: COPY --from={from} names no earlier stage (have {defined:?})",
                    ins.line
                );
            }
        }
        defined.insert(name.clone());
    }

    let builds_the_sink = stages.iter().flat_map(|(_, b)| b).any(|i| {
        i.keyword == "RUN"
            && i.args.contains("cargo build")
            && i.args.contains("-p cloud-sink")
            && i.args.contains("--locked")
    });
    assert!(
        builds_the_sink,
        "no stage runs `cargo build --locked -p cloud-sink`"
    );

    let (runtime_name, runtime) = stages.last().expect("stages checked above");
    let user = runtime
        .iter()
        .rev()
        .find(|i| i.keyword == "USER")
        .unwrap_or_else(|| {
            panic!("the runtime stage {runtime_name} sets no USER (it would run as root)")
        });
    let uid = user.args.split(':').next().unwrap_or("");
    assert!(
        uid != "0" && uid != "root" && !uid.is_empty(),
        "the runtime stage runs as {:?}",
        user.args
    );
    assert!(
        runtime.iter().all(|i| i.keyword != "RUN"),
        "the runtime stage runs commands: it should only copy the binary into a minimal base"
    );
    let copied: Vec<&str> = runtime
        .iter()
        .filter(|i| i.keyword == "COPY" && flag(&i.args, "from").is_some())
        .filter_map(|i| i.args.split_whitespace().last())
        .collect();
    let entry = runtime
        .iter()
        .find(|i| i.keyword == "ENTRYPOINT")
        .map(|i| json_array(&i.args, "ENTRYPOINT"))
        .expect("the runtime stage has no ENTRYPOINT");
    assert!(
        copied.contains(&entry[0].as_str()),
        "ENTRYPOINT {entry:?} starts a file not copied from the build stage ({copied:?})"
    );
    if let Some(cmd) = runtime.iter().find(|i| i.keyword == "CMD") {
        let cmd = json_array(&cmd.args, "CMD");
        assert!(
            ["kafka", "mqtt", "bridge", "migrate"].contains(&cmd[0].as_str()),
            "CMD {cmd:?} is no subcommand"
        );
    }
}

#[test]
fn the_checker_catches_what_docker_would_refuse() {
    let broken = "FROM a AS build\nRUN x \\\n  y\nFROM b\nCOPY --from=nowhere /x /y\n";
    let parsed = instructions(broken);
    assert_eq!(parsed.len(), 4);
    assert_eq!(parsed[1].args, "x y");
    assert_eq!(parsed[1].line, 2);
    assert_eq!(flag(&parsed[3].args, "from"), Some("nowhere"));
}
