//! `slapos console`: an interactive console bound to the master, on the
//! Rhai scripting language. The verbs of the client are functions returning
//! objects: `request(...)` gives an instance with `connection_parameters()`,
//! `supply(...)`, `computer(id)`, `services()`, … Scripts run with
//! `slapos console FILE [ARG…]` (as SlapOS; `ARGV` holds FILE and its
//! arguments), `slapos console --command "…"`, or from standard input when
//! it is not a terminal; without them, an interactive prompt with line
//! editing and history.
//!
//! The options are SlapOS's: `-u/--master_url`, `-k/--key_file`,
//! `-c/--cert_file` (so `-c` is the certificate, as in SlapOS, and inline
//! code is `--command`); `-i/-b/-p` (IPython, bpython, plain Python) are
//! accepted with a note, since this console speaks Rhai.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::anyhow;
use rhai::{Dynamic, Engine, EvalAltResult, Map, Position, Scope};
use slap::client::{InstanceRequest, RequestResult, SlapClient};
use slap::marshal::Value;
use slap::model::{InstanceState, RequestedInstance, SoftwareState};
use slapos_config::{client_config_path, Config};

use crate::client_cmd::{connection_json, ClientSettings};
use crate::Global;

#[derive(Debug, clap::Args)]
pub struct ConsoleArgs {
    /// The master to talk to (overrides [slapos] master_url).
    #[arg(short = 'u', long = "master-url", visible_alias = "master_url", value_name = "URL")]
    pub master_url: Option<String>,
    /// Our key for the master (overrides [slapconsole] key_file).
    #[arg(short = 'k', long = "key-file", visible_alias = "key_file", value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Our certificate for the master (overrides [slapconsole] cert_file).
    #[arg(short = 'c', long = "cert-file", visible_alias = "cert_file", value_name = "FILE")]
    pub cert_file: Option<PathBuf>,
    /// SlapOS's IPython shell: accepted; this console speaks Rhai.
    #[arg(short = 'i', long, group = "shell")]
    pub ipython: bool,
    /// SlapOS's bpython shell: accepted; this console speaks Rhai.
    #[arg(short = 'b', long, group = "shell")]
    pub bpython: bool,
    /// SlapOS's plain Python shell: accepted; this console speaks Rhai.
    #[arg(short = 'p', long, group = "shell")]
    pub python: bool,
    /// A script given on the command line.
    #[arg(long = "command", value_name = "CODE", conflicts_with = "script")]
    pub command: Option<String>,
    /// A script file to run, then its arguments (ARGV in the script).
    #[arg(value_name = "SCRIPT [ARG]...", trailing_var_arg = true, allow_hyphen_values = true)]
    pub script: Vec<String>,
}

const HELP: &str = "\
slapos console — the master at your fingertips (Rhai scripting: https://rhai.rs)

  request(name, software_url)                      request an instance
  request(name, software_url, #{param: \"value\"})   … with parameters
  request(name, software_url, params, #{type: \"default\", state: \"started\",
          shared: false, node: #{computer_guid: \"COMP-1\"}})
      → an instance: .ready(), .title(), .state(), .partition_id(),
        .computer_id(), .software_release(), .parameters(),
        .connection_parameters()
  supply(software_url, computer_id)                install a software release
  remove(software_url, computer_id)                remove it
  computer(computer_id)  → .software_releases(), .partitions()
  services()             → [#{title, software_release}, …]
  service(title)         → #{software_release, requested_state, parameters,
                             connection_parameters, …}
  computers()            → [#{reference, title}, …]
  master_url()           the master this console talks to
  help()                 this text
";

/// An instance as a request answered it.
#[derive(Debug, Clone)]
pub struct Instance {
    title: String,
    software_release: String,
    answer: Option<RequestedInstance>,
}

fn json_to_dynamic(v: &serde_json::Value) -> Dynamic {
    match v {
        serde_json::Value::Null => Dynamic::UNIT,
        serde_json::Value::Bool(b) => Dynamic::from(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Dynamic::from(i),
            None => Dynamic::from(n.as_f64().unwrap_or(0.0)),
        },
        serde_json::Value::String(s) => Dynamic::from(s.clone()),
        serde_json::Value::Array(a) => Dynamic::from(a.iter().map(json_to_dynamic).collect::<rhai::Array>()),
        serde_json::Value::Object(m) => {
            let mut map = Map::new();
            for (k, v) in m {
                map.insert(k.as_str().into(), json_to_dynamic(v));
            }
            Dynamic::from(map)
        }
    }
}

fn value_to_dynamic(v: &Value) -> Dynamic {
    match v {
        Value::None => Dynamic::UNIT,
        Value::Bool(b) => Dynamic::from(*b),
        Value::Int(i) => Dynamic::from(*i as i64),
        Value::Float(f) => Dynamic::from(*f),
        Value::Str(s) => Dynamic::from(s.clone()),
        Value::List(a) | Value::Tuple(a) | Value::Set(a) => Dynamic::from(a.iter().map(value_to_dynamic).collect::<rhai::Array>()),
        Value::Dict(d) => {
            let mut map = Map::new();
            for (k, v) in d {
                map.insert(k.as_str().into(), value_to_dynamic(v));
            }
            Dynamic::from(map)
        }
        Value::Object(o) => Dynamic::from(format!("<{}.{}>", o.module, o.class)),
    }
}

fn dynamic_to_value(d: &Dynamic) -> Value {
    if d.is_unit() {
        Value::None
    } else if let Some(b) = d.clone().try_cast::<bool>() {
        Value::Bool(b)
    } else if let Some(i) = d.clone().try_cast::<i64>() {
        Value::Int(i as i128)
    } else if let Some(f) = d.clone().try_cast::<f64>() {
        Value::Float(f)
    } else if let Some(a) = d.clone().try_cast::<rhai::Array>() {
        Value::List(a.iter().map(dynamic_to_value).collect())
    } else if let Some(m) = d.clone().try_cast::<Map>() {
        Value::Dict(m.iter().map(|(k, v)| (k.to_string(), dynamic_to_value(v))).collect())
    } else {
        Value::str(d.to_string())
    }
}

type R<T> = Result<T, Box<EvalAltResult>>;

fn err<T>(e: impl std::fmt::Display) -> R<T> {
    Err(e.to_string().into())
}

/// The engine with the console's functions, bound to one master.
pub fn engine(settings: Arc<ClientSettings>) -> anyhow::Result<Engine> {
    let client: SlapClient = settings.slap()?;
    let mut engine = Engine::new();
    engine.set_max_expr_depths(256, 256);
    // print() of scripts goes through the same broken-pipe handling
    engine.on_print(|text| outln!("{text}"));
    engine
        .register_type_with_name::<Instance>("Instance")
        .register_fn("ready", |i: &mut Instance| i.answer.is_some())
        .register_fn("title", |i: &mut Instance| i.title.clone())
        .register_fn("software_release", |i: &mut Instance| i.software_release.clone())
        .register_fn("state", |i: &mut Instance| {
            i.answer.as_ref().and_then(|a| a.requested_state).map(|s| s.to_string()).unwrap_or_else(|| "not ready".into())
        })
        .register_fn("partition_id", |i: &mut Instance| i.answer.as_ref().and_then(|a| a.partition_id.clone()).unwrap_or_default())
        .register_fn("computer_id", |i: &mut Instance| i.answer.as_ref().and_then(|a| a.computer_id.clone()).unwrap_or_default())
        .register_fn("parameters", |i: &mut Instance| {
            let p = i.answer.as_ref().map(|a| a.instance_parameters()).unwrap_or_default();
            value_to_dynamic(&Value::Dict(p))
        })
        .register_fn("connection_parameters", |i: &mut Instance| {
            let c = i.answer.as_ref().map(|a| a.connection_parameters()).unwrap_or_default();
            json_to_dynamic(&connection_json(&c))
        })
        .register_fn("to_string", |i: &mut Instance| match &i.answer {
            Some(a) => format!(
                "Instance {} ({} on {}/{})",
                i.title,
                a.requested_state.map(|s| s.to_string()).unwrap_or_default(),
                a.computer_id.as_deref().unwrap_or(""),
                a.partition_id.as_deref().unwrap_or("")
            ),
            None => format!("Instance {} (not ready yet)", i.title),
        });

    let do_request = {
        let client = client.clone();
        move |name: &str, sr: &str, params: Map, options: Map| -> R<Instance> {
            let mut req = InstanceRequest::new(sr, name);
            req.parameters = params.iter().map(|(k, v)| (k.to_string(), dynamic_to_value(v))).collect();
            for (k, v) in options.iter() {
                match k.as_str() {
                    "type" | "software_type" => req.software_type = v.to_string(),
                    "state" => match v.to_string().parse::<InstanceState>() {
                        Ok(s) => req.state = Some(s),
                        Err(e) => return err(e),
                    },
                    "shared" | "slave" => req.shared = v.as_bool().unwrap_or(false),
                    "node" | "filter" => match v.clone().try_cast::<Map>() {
                        Some(m) => req.filter = m.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                        None => return err("option 'node' must be a map, e.g. #{computer_guid: \"COMP-1\"}"),
                    },
                    other => return err(format!("unknown request option '{other}' (type, state, shared, node)")),
                }
            }
            match client.request(&req) {
                Ok(RequestResult::Ready(a)) => Ok(Instance { title: name.into(), software_release: sr.into(), answer: Some(*a) }),
                Ok(RequestResult::NotReady { .. }) => Ok(Instance { title: name.into(), software_release: sr.into(), answer: None }),
                Err(e) => err(e),
            }
        }
    };
    {
        let f = do_request.clone();
        engine.register_fn("request", move |name: &str, sr: &str| f(name, sr, Map::new(), Map::new()));
    }
    {
        let f = do_request.clone();
        engine.register_fn("request", move |name: &str, sr: &str, params: Map| f(name, sr, params, Map::new()));
    }
    engine.register_fn("request", move |name: &str, sr: &str, params: Map, options: Map| do_request(name, sr, params, options));
    for (verb, state) in [("supply", SoftwareState::Available), ("remove", SoftwareState::Destroyed)] {
        let client = client.clone();
        engine.register_fn(verb, move |sr: &str, computer: &str| -> R<String> { client.supply(sr, computer, state).or_else(err) });
    }
    {
        let client = client.clone();
        engine.register_fn("computer", move |id: &str| -> R<Map> {
            let c = client.computer_information(id).or_else(err)?;
            let mut m = Map::new();
            m.insert("id".into(), Dynamic::from(c.computer_id.clone()));
            let srs: rhai::Array = c
                .software_releases
                .iter()
                .map(|s| {
                    let mut x = Map::new();
                    x.insert("url".into(), Dynamic::from(s.url.clone()));
                    x.insert("state".into(), Dynamic::from(s.state().to_string()));
                    Dynamic::from(x)
                })
                .collect();
            let parts: rhai::Array = c
                .partitions
                .iter()
                .map(|p| {
                    let mut x = Map::new();
                    x.insert("id".into(), Dynamic::from(p.partition_id.clone()));
                    x.insert("state".into(), Dynamic::from(p.requested_state.map(|s| s.to_string()).unwrap_or_default()));
                    x.insert("instance".into(), p.instance_title().map(|t| Dynamic::from(t.to_string())).unwrap_or(Dynamic::UNIT));
                    x.insert(
                        "software_release".into(),
                        p.software_release_url().map(|t| Dynamic::from(t.to_string())).unwrap_or(Dynamic::UNIT),
                    );
                    x.insert("free".into(), Dynamic::from(p.is_free()));
                    Dynamic::from(x)
                })
                .collect();
            m.insert("software_releases".into(), Dynamic::from(srs));
            m.insert("partitions".into(), Dynamic::from(parts));
            Ok(m)
        });
    }
    engine.register_fn("software_releases", |m: &mut Map| m.get("software_releases").cloned().unwrap_or(Dynamic::UNIT));
    engine.register_fn("partitions", |m: &mut Map| m.get("partitions").cloned().unwrap_or(Dynamic::UNIT));
    {
        let s = settings.clone();
        engine.register_fn("services", move || -> R<rhai::Array> {
            let h = s.hateoas().or_else(err)?;
            let list = h.services().or_else(err)?;
            Ok(list.iter().map(|x| json_to_dynamic(&serde_json::to_value(x).unwrap_or_default())).collect())
        });
    }
    {
        let s = settings.clone();
        engine.register_fn("service", move |title: &str| -> R<Dynamic> {
            let h = s.hateoas().or_else(err)?;
            match h.service(title).or_else(err)? {
                Some(info) => {
                    let mut v = serde_json::to_value(&info).unwrap_or_default();
                    v["parameters"] = connection_json(&info.parameters);
                    v["connection_parameters"] = connection_json(&info.connection_parameters);
                    Ok(json_to_dynamic(&v))
                }
                None => err(format!("service '{title}' does not exist")),
            }
        });
    }
    {
        let s = settings.clone();
        engine.register_fn("computers", move || -> R<rhai::Array> {
            let h = s.hateoas().or_else(err)?;
            Ok(h.computers().or_else(err)?.iter().map(|x| json_to_dynamic(&serde_json::to_value(x).unwrap_or_default())).collect())
        });
    }
    {
        let url = settings.master_url.clone();
        engine.register_fn("master_url", move || url.clone());
    }
    engine.register_fn("help", || {
        out!("{HELP}");
    });
    Ok(engine)
}

fn describe(e: &EvalAltResult, source: &str) -> String {
    let pos: Position = e.position();
    let msg = match e {
        EvalAltResult::ErrorRuntime(d, _) => d.to_string(),
        EvalAltResult::ErrorInFunctionCall(_, _, inner, _) => return describe(inner, source),
        other => other.to_string().split(" (line ").next().unwrap_or_default().to_string(),
    };
    match (pos.line(), pos.position()) {
        (Some(l), Some(c)) => format!("{source}, line {l}, column {c}: {msg}"),
        (Some(l), None) => format!("{source}, line {l}: {msg}"),
        _ => format!("{source}: {msg}"),
    }
}

fn run_script(engine: &Engine, code: &str, source: &str, argv: &[String]) -> anyhow::Result<u8> {
    let mut scope = Scope::new();
    scope.push_constant("ARGV", argv.iter().cloned().map(Dynamic::from).collect::<rhai::Array>());
    match engine.eval_with_scope::<Dynamic>(&mut scope, code) {
        Ok(_) => Ok(0),
        Err(e) => Err(anyhow!("{}", describe(&e, source))),
    }
}

/// True when `code` only lacks its end (an unclosed block or string).
fn incomplete(engine: &Engine, code: &str) -> bool {
    match engine.compile(code) {
        Err(e) => {
            matches!(e.err_type(), rhai::ParseErrorType::MissingToken(..) | rhai::ParseErrorType::UnknownOperator(_))
                && e.position().line().is_none_or(|l| l >= code.lines().count())
        }
        Ok(_) => false,
    }
}

fn interactive(engine: &Engine, settings: &ClientSettings) -> anyhow::Result<u8> {
    use rustyline::error::ReadlineError;
    let mut editor = rustyline::DefaultEditor::new()?;
    let history = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".slapos").join("console_history"));
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    outln!("slapos console — master {} — help() lists the functions, Ctrl-D quits", settings.master_url);
    let mut scope = Scope::new();
    let mut buffer = String::new();
    loop {
        let prompt = if buffer.is_empty() { "slapos> " } else { "   ...> " };
        match editor.readline(prompt) {
            Ok(line) => {
                if !buffer.is_empty() {
                    buffer.push('\n');
                }
                buffer.push_str(&line);
                if buffer.trim().is_empty() {
                    buffer.clear();
                    continue;
                }
                if incomplete(engine, &buffer) {
                    continue;
                }
                let _ = editor.add_history_entry(buffer.as_str());
                match engine.eval_with_scope::<Dynamic>(&mut scope, &buffer) {
                    Ok(v) if !v.is_unit() => outln!("{v}"),
                    Ok(_) => {}
                    Err(e) => eprintln!("error: {}", describe(&e, "input")),
                }
                buffer.clear();
            }
            Err(ReadlineError::Interrupted) => buffer.clear(),
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(h) = &history {
        if let Some(dir) = h.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = editor.save_history(h);
    }
    Ok(0)
}

/// The client settings with the console's options applied as SlapOS does:
/// `-k`/`-c` before `[slapconsole]`, which fills what they leave, and `-u`
/// before `[slapos] master_url` (SlapOS 1.26.1 parses `-u` but then always
/// takes the file's URL; we honour it).
fn settings(args: &ConsoleArgs, global: &Global) -> anyhow::Result<ClientSettings> {
    let path = client_config_path(global.cfg.as_deref());
    let mut config = Config::load(&path)?;
    if let Some(u) = &args.master_url {
        config.section_mut("slapos").set("master_url", u.clone());
    }
    for (key, value) in [("key_file", &args.key_file), ("cert_file", &args.cert_file)] {
        if let Some(v) = value {
            config.section_mut("slapconsole").set(key, v.display().to_string());
        }
    }
    ClientSettings::from_config(&config, &path)
}

pub fn run(args: ConsoleArgs, global: &Global) -> anyhow::Result<u8> {
    if args.ipython || args.bpython || args.python {
        tracing::warn!("-i/-b/-p choose a Python shell in SlapOS; this console speaks Rhai (help() lists its functions)");
    }
    let settings = Arc::new(settings(&args, global)?);
    let engine = engine(settings.clone())?;
    if let Some(code) = &args.command {
        return run_script(&engine, code, "--command", &[]);
    }
    if let Some(file) = args.script.first() {
        let code = std::fs::read_to_string(file).map_err(|e| anyhow!("cannot read {file}: {e}"))?;
        return run_script(&engine, &code, file, &args.script);
    }
    if !std::io::stdin().is_terminal() {
        let mut code = String::new();
        std::io::stdin().read_to_string(&mut code).map_err(|e| anyhow!("cannot read the script on standard input: {e}"))?;
        return run_script(&engine, &code, "<stdin>", &[]);
    }
    interactive(&engine, &settings)
}
