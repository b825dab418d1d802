//! Client commands: `slapos request|supply|remove|service|computer`, with
//! the arguments and configuration of SlapOS (`slapos-client.cfg`:
//! `[slapos] master_url`, `master_rest_url`, `[slapconsole] cert_file,
//! key_file, master_ca_file`; `--cfg` or `$SLAPOS_CLIENT_CONFIGURATION`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde_json::json;
use slap::client::{ClientConfig, InstanceRequest, RequestResult, SlapClient};
use slap::hateoas::HateoasClient;
use slap::instance_xml;
use slap::marshal::Value;
use slap::model::{InstanceState, SoftwareState};
use slap::schema::{self, Serialisation, SoftwareReleaseSchema};
use slap::tls::TlsFiles;
use slapos_config::{client_config_path, Config};

use crate::Global;

#[derive(Debug, clap::Subcommand)]
pub enum ClientCommand {
    /// Request an instance of a software release, and print its connection
    /// parameters (exit 2 while the master is still provisioning it).
    Request(RequestArgs),
    /// Ask a computer to install a software release.
    Supply(SupplyArgs),
    /// Ask a computer to remove a software release.
    Remove(SupplyArgs),
    /// Services (instance trees) of the master.
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Computers of the master.
    #[command(subcommand)]
    Computer(ComputerCommand),
}

#[derive(Debug, clap::Args)]
pub struct RequestArgs {
    /// The instance reference (its title).
    pub reference: String,
    /// The software release URL (or `product.<name>`).
    pub software_url: String,
    /// Node (SLA) options, e.g. computer_guid=COMP-1234.
    #[arg(long, num_args = 1.., value_name = "KEY=VALUE")]
    pub node: Vec<String>,
    /// Instance parameters.
    #[arg(long, num_args = 1.., value_name = "KEY=VALUE", conflicts_with = "parameters_file")]
    pub parameters: Vec<String>,
    /// Instance parameters in a file: JSON, YAML (.yaml, .yml) or instance
    /// XML (.xml, sent as it is), by its extension.
    #[arg(long, value_name = "FILE")]
    pub parameters_file: Option<PathBuf>,
    /// Software type to request.
    #[arg(long = "type", value_name = "SOFTWARE_TYPE")]
    pub software_type: Option<String>,
    /// Request a shared (slave) instance.
    #[arg(long)]
    pub slave: bool,
    /// Requested state.
    #[arg(long, value_parser = ["started", "stopped", "destroyed"])]
    pub state: Option<String>,
    /// Force the serialisation of parameters (json-in-xml wraps them as `_`).
    #[arg(long, value_parser = ["xml", "json-in-xml"])]
    pub force_serialisation: Option<String>,
    /// Print the connection parameters as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Refuse to send parameters that do not validate against the software
    /// release's schema (`software.cfg.json`), or when that schema cannot be
    /// read; without it, such problems are warnings, as in SlapOS.
    #[arg(long)]
    pub strict: bool,
}

#[derive(Debug, clap::Args)]
pub struct SupplyArgs {
    /// The software release URL (or `product.<name>`).
    pub software_url: String,
    /// The computer (node) reference.
    pub node: String,
}

#[derive(Debug, clap::Subcommand)]
pub enum ServiceCommand {
    /// List the services (root instances) and their software releases.
    List(JsonArg),
    /// Show a service: state, parameters, connection parameters, its status
    /// from the master's news, and (with our master) what the node last
    /// reported.
    Info(ServiceInfoArgs),
}

#[derive(Debug, clap::Subcommand)]
pub enum ComputerCommand {
    /// List the computers.
    List(JsonArg),
    /// Show a computer.
    Info(InfoArgs),
    /// Mint a one-time token to join a computer (administrator).
    Token(crate::identity_cmd::ComputerTokenArgs),
}

#[derive(Debug, clap::Args)]
pub struct JsonArg {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct InfoArgs {
    /// Service title or computer reference.
    pub reference: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ServiceInfoArgs {
    #[command(flatten)]
    pub info: InfoArgs,
    /// Include the master's raw news (the status of each instance).
    #[arg(long)]
    pub news: bool,
}

/// What the client commands need from `slapos-client.cfg`.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    pub master_url: String,
    pub master_rest_url: String,
    /// `cert_file`, `key_file` and `master_ca_file`.
    pub tls: TlsFiles,
    pub timeout: Duration,
}

impl ClientSettings {
    pub fn load(global: &Global) -> anyhow::Result<ClientSettings> {
        let path = client_config_path(global.cfg.as_deref());
        let config = Config::load(&path)?;
        Self::from_config(&config, &path)
    }

    pub fn from_config(config: &Config, path: &Path) -> anyhow::Result<ClientSettings> {
        let master_url = config
            .get_nonempty("slapos", "master_url")
            .ok_or_else(|| anyhow!("master_url is not set in [slapos] of {}", path.display()))?
            .to_string();
        // the Python proxy and ours both serve HATEOAS at /hateoas/
        let master_rest_url = match config.get_nonempty("slapos", "master_rest_url") {
            Some(u) => u.to_string(),
            None => format!("{}/hateoas/", master_url.trim_end_matches('/')),
        };
        // [slapconsole] first; SlapOS falls back to the node's [slapos]
        // key_file/cert_file when neither is there, and we do the same for
        // master_ca_file
        let file = |k: &str| config.get_path("slapconsole", k);
        let (mut cert_file, mut key_file) = (file("cert_file"), file("key_file"));
        if cert_file.is_none() && key_file.is_none() {
            (cert_file, key_file) = (config.get_path("slapos", "cert_file"), config.get_path("slapos", "key_file"));
        }
        let ca_file = file("master_ca_file").or_else(|| config.get_path("slapos", "master_ca_file"));
        let timeout = match config.get_int("slapos", "timeout")? {
            Some(t) if t > 0 => Duration::from_secs(t as u64),
            _ => Duration::from_secs(60),
        };
        let tls = TlsFiles { ca_file, cert_file, key_file };
        Ok(ClientSettings { master_url, master_rest_url, tls, timeout })
    }

    /// The SLAP client of `master_url`.
    pub fn slap(&self) -> anyhow::Result<SlapClient> {
        let mut c = ClientConfig::new(&self.master_url).with_timeout(self.timeout);
        c.key_file = self.tls.key_file.clone();
        c.cert_file = self.tls.cert_file.clone();
        c.ca_file = self.tls.ca_file.clone();
        Ok(SlapClient::new(c)?)
    }

    /// The HATEOAS client of `master_rest_url`, with the same TLS files.
    pub fn hateoas(&self) -> anyhow::Result<HateoasClient> {
        Ok(HateoasClient::connect(&self.master_rest_url, &self.tls, self.timeout)?)
    }
}

/// `KEY=VALUE` items into a map; repeated keys and items without `=` are errors.
pub fn parse_key_values(items: &[String], what: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for item in items {
        let (k, v) = item.split_once('=').ok_or_else(|| anyhow!("malformed {what} '{item}': expected KEY=VALUE"))?;
        if k.is_empty() {
            bail!("malformed {what} '{item}': empty key");
        }
        if out.insert(k.to_string(), v.to_string()).is_some() {
            bail!("multiple values given for the same {what} key '{k}'");
        }
    }
    Ok(out)
}

/// A `--parameters-file`, read as SlapOS reads it: by its extension.
#[derive(Debug, Clone, PartialEq)]
pub enum ParametersFile {
    /// `.json` (or any other extension) and `.yaml`/`.yml`: typed values,
    /// wrapped as `_` when the software release asks for json-in-xml.
    Values(serde_json::Map<String, serde_json::Value>),
    /// `.xml`, the instance XML format (`<instance><parameter id=…>`):
    /// sent as it is, whatever the serialisation (SlapOS: such files are
    /// copied from existing instances, already serialised).
    Xml(BTreeMap<String, Option<String>>),
}

/// Reads a parameters file: `.yaml`/`.yml` as YAML, `.xml` as instance
/// XML, anything else as JSON (as SlapOS's `getParametersFromFile`);
/// errors say where.
pub fn read_parameters_file(path: &Path) -> anyhow::Result<ParametersFile> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read parameters file {}", path.display()))?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let value: serde_json::Value = match ext {
        "xml" => {
            let dict = instance_xml::xml_to_dict(&text).map_err(|e| anyhow!("invalid instance XML in {}: {e}", path.display()))?;
            return Ok(ParametersFile::Xml(dict));
        }
        "yaml" | "yml" => serde_saphyr::from_str(&text).map_err(|e| {
            let e = e.to_string();
            anyhow!("invalid YAML in {}: {}", path.display(), e.lines().next().unwrap_or_default())
        })?,
        _ => serde_json::from_str(&text)
            .map_err(|e| anyhow!("invalid JSON in {} at line {}, column {}: {e}", path.display(), e.line(), e.column()))?,
    };
    let what = if matches!(ext, "yaml" | "yml") { "a YAML mapping" } else { "a JSON object" };
    match value {
        serde_json::Value::Object(m) => Ok(ParametersFile::Values(m)),
        other => bail!("{}: the parameters must be {what}, not {}", path.display(), json_kind(&other)),
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// SlapOS's status of a service from the master's news: `green` when an
/// instance says `#access`, `red` for `#error`, `orange` for both, `none`
/// for neither, `unsupported` when the master gives no news (the Python
/// proxy).
pub fn news_status(news: Option<&serde_json::Value>) -> &'static str {
    let Some(list) = news.and_then(|n| n.get("instance")).and_then(|l| l.as_array()) else { return "unsupported" };
    let mut bits = 0;
    for e in list {
        let text = e.get("text").and_then(|t| t.as_str()).unwrap_or("");
        if text.starts_with("#access") {
            bits |= 1;
        } else if text.starts_with("#error") {
            bits |= 2;
        }
    }
    ["none", "green", "red", "orange"][bits]
}

/// JSON values as marshalled values (parameters keep their types on the
/// wire; the master turns them to text).
pub fn json_to_value(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::None,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i as i128),
            None => Value::Float(n.as_f64().unwrap_or(0.0)),
        },
        serde_json::Value::String(s) => Value::str(s),
        serde_json::Value::Array(a) => Value::List(a.iter().map(json_to_value).collect()),
        serde_json::Value::Object(m) => Value::Dict(m.iter().map(|(k, v)| (k.clone(), json_to_value(v))).collect()),
    }
}

/// SlapOS validates nothing for this alias of the frontend (it has no schema).
const UNVALIDATED_RELEASES: &[&str] = &["http://git.erp5.org/gitweb/slapos.git/blob_plain/HEAD:/software/apache-frontend/software.cfg"];

/// The software release's schema (`<url>.json`), None when it publishes
/// none or it cannot be read: that is a warning, as in SlapOS, or an error
/// with `--strict`.
fn release_schema(software_url: &str, strict: bool) -> anyhow::Result<Option<SoftwareReleaseSchema>> {
    if UNVALIDATED_RELEASES.contains(&software_url) {
        return Ok(None);
    }
    match SoftwareReleaseSchema::load(software_url, &schema::Options::default()) {
        Ok(Some(s)) => Ok(Some(s)),
        Ok(None) => {
            tracing::debug!("{software_url} has no schema ({software_url}.json): parameters are not validated");
            Ok(None)
        }
        Err(e) if strict => bail!("cannot validate the parameters against the schema of {software_url} (--strict): {e}"),
        Err(e) => {
            // SlapOS: a warning, then the request as if there were no schema
            tracing::warn!("Unable to load JSON: {e}");
            Ok(None)
        }
    }
}

/// Checks `parameters` (as they will be sent) against the schema of
/// `software_type`, warning as SlapOS does (`Request parameters do not
/// validate against schema definition:` and one indented line per problem);
/// with `strict`, a problem is an error.
fn check_parameters(
    schema: &SoftwareReleaseSchema,
    software_type: Option<&str>,
    parameters: &serde_json::Map<String, serde_json::Value>,
    strict: bool,
) -> anyhow::Result<()> {
    let url = schema.software_url();
    let name = software_type.unwrap_or(schema::DEFAULT_SOFTWARE_TYPE);
    if schema.software_type(software_type).is_err() {
        tracing::warn!("No schema defined for software type '{name}' of software release {url}");
        return Ok(());
    }
    if schema.serialisation(software_type).is_none() {
        tracing::warn!("Invalid or undefined serialisation for software type '{name}' of software release {url}");
    }
    let start = std::time::Instant::now();
    let issues = match schema.validate(software_type, &serde_json::Value::Object(parameters.clone())) {
        Ok(issues) => issues,
        Err(e) if strict => bail!("cannot validate the parameters against the schema of {url} (--strict): {e}"),
        Err(e) => {
            tracing::warn!("Error validating request parameters against schema definition:\n{e}");
            return Ok(());
        }
    };
    tracing::debug!("parameters validated against the schema of {url} in {:?}", start.elapsed());
    if issues.is_empty() {
        return Ok(());
    }
    let lines: Vec<String> = issues.iter().map(|i| format!("  {i}")).collect();
    tracing::warn!("Request parameters do not validate against schema definition:\n{}", lines.join("\n"));
    if strict {
        bail!("{} problem(s) in the parameters of {} for {url} (--strict): nothing requested", issues.len(), name);
    }
    Ok(())
}

/// The parameters as given: `--parameters` (strings) or a `--parameters-file`.
enum GivenParameters {
    Pairs(serde_json::Map<String, serde_json::Value>),
    File(ParametersFile),
}

/// Reads the parameters given (before anything is fetched: bad input fails
/// first).
fn given_parameters(args: &RequestArgs) -> anyhow::Result<GivenParameters> {
    Ok(match &args.parameters_file {
        Some(file) => GivenParameters::File(read_parameters_file(file)?),
        None => GivenParameters::Pairs(parse_key_values(&args.parameters, "parameter")?.into_iter().map(|(k, v)| (k, json!(v))).collect()),
    })
}

/// The parameters to send, as JSON: `--parameters` as strings, a
/// `--parameters-file` as SlapOS reads it (wrapped as `_` for json-in-xml:
/// `--force-serialisation`, else the schema's; an instance XML file as it
/// is).
fn request_parameters(
    args: &RequestArgs,
    given: GivenParameters,
    schema: Option<&SoftwareReleaseSchema>,
) -> serde_json::Map<String, serde_json::Value> {
    let wrap = |m: &serde_json::Map<String, serde_json::Value>| -> serde_json::Map<String, serde_json::Value> {
        instance_xml::wrap_json(m).into_iter().map(|(k, v)| (k, json!(v.as_str()))).collect()
    };
    let forced = args.force_serialisation.as_deref().and_then(Serialisation::parse);
    match given {
        GivenParameters::Pairs(m) if forced == Some(Serialisation::JsonInXml) => wrap(&m),
        GivenParameters::Pairs(m) => m,
        GivenParameters::File(ParametersFile::Xml(dict)) => dict.into_iter().map(|(k, v)| (k, json!(v))).collect(),
        GivenParameters::File(ParametersFile::Values(params)) => {
            let serialisation = forced.or_else(|| schema.and_then(|s| s.serialisation(args.software_type.as_deref())));
            if serialisation == Some(Serialisation::JsonInXml) {
                wrap(&params)
            } else {
                params
            }
        }
    }
}

/// `product.<name>` → the URL the master knows for that product.
fn resolve_software(client: &SlapClient, software: &str) -> anyhow::Result<String> {
    match software.strip_prefix("product.") {
        Some(product) => client
            .software_release_list_from_product(product)?
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("the master knows no software release for product '{product}'")),
        None => Ok(software.to_string()),
    }
}

fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    t.set_header(header.to_vec());
    for r in rows {
        t.add_row(r);
    }
    t.to_string()
}

fn optional(v: &Option<String>) -> String {
    v.clone().unwrap_or_default()
}

/// The connection parameters as text, with the `_` JSON variant unwrapped.
pub fn connection_json(conn: &BTreeMap<String, Option<String>>) -> serde_json::Value {
    if let Some(v) = instance_xml::unwrap_json(conn) {
        return v;
    }
    serde_json::Value::Object(conn.iter().map(|(k, v)| (k.clone(), json!(v))).collect())
}

fn print_parameters(v: &serde_json::Value) {
    let rows = match v.as_object() {
        Some(m) => m
            .iter()
            .map(|(k, v)| {
                vec![
                    k.clone(),
                    match v {
                        serde_json::Value::String(s) => s.clone(),
                        serde_json::Value::Null => String::new(),
                        other => other.to_string(),
                    },
                ]
            })
            .collect(),
        None => vec![vec!["".into(), v.to_string()]],
    };
    outln!("{}", table(&["name", "value"], rows));
}

fn print_news(news: Option<&serde_json::Value>) {
    let Some(list) = news.and_then(|n| n.get("instance")).and_then(|l| l.as_array()) else {
        outln!("News: the master gives none.");
        return;
    };
    let field = |e: &serde_json::Value, k: &str| e.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
    let rows = list.iter().map(|e| vec![field(e, "reference"), field(e, "text"), field(e, "created_at")]).collect();
    outln!("News:");
    outln!("{}", table(&["instance", "news", "at"], rows));
}

fn request(args: RequestArgs, settings: &ClientSettings) -> anyhow::Result<u8> {
    let client = settings.slap()?;
    let software_url = resolve_software(&client, &args.software_url)?;
    let node = parse_key_values(&args.node, "node option")?;
    let given = given_parameters(&args)?;
    tracing::debug!("Validating request parameters for {} as an instance of {software_url} ...", args.reference);
    let schema = release_schema(&software_url, args.strict)?;
    let parameters = request_parameters(&args, given, schema.as_ref());
    if let Some(schema) = &schema {
        check_parameters(schema, args.software_type.as_deref(), &parameters, args.strict)?;
    }
    let parameters: BTreeMap<String, Value> = parameters.iter().map(|(k, v)| (k.clone(), json_to_value(v))).collect();
    let mut req = InstanceRequest::new(&software_url, &args.reference);
    req.software_type = args.software_type.clone().unwrap_or_default();
    req.parameters = parameters;
    req.filter = node;
    req.shared = args.slave;
    req.state = args.state.as_deref().map(str::parse::<InstanceState>).transpose()?;
    tracing::info!("Requesting {} as an instance of {software_url} ...", args.reference);
    match client.request(&req)? {
        RequestResult::NotReady { .. } => {
            tracing::warn!(
                "Instance {} requested. The master is provisioning it: run this command again in a couple of minutes to get its connection parameters.",
                args.reference
            );
            Ok(2)
        }
        RequestResult::Ready(instance) => {
            let state = instance.requested_state.map(|s| s.to_string()).unwrap_or_else(|| "started".into());
            let conn = connection_json(&instance.connection_parameters());
            if args.json {
                outln!("{}", serde_json::to_string_pretty(&conn)?);
            } else {
                tracing::info!("Instance requested. State is: {state}.");
                if conn.as_object().is_some_and(|m| m.is_empty()) {
                    outln!(
                        "Instance {} ({state}) has no connection parameters yet: run this command again once the node has deployed it.",
                        args.reference
                    );
                } else {
                    outln!("Connection parameters of instance {} ({state}):", args.reference);
                    print_parameters(&conn);
                }
            }
            Ok(0)
        }
    }
}

fn supply(args: SupplyArgs, settings: &ClientSettings, state: SoftwareState) -> anyhow::Result<u8> {
    let client = settings.slap()?;
    let url = resolve_software(&client, &args.software_url)?;
    client.supply(&url, &args.node, state)?;
    match state {
        SoftwareState::Available => outln!("Requested software release {url} to be installed on {}.", args.node),
        SoftwareState::Destroyed => outln!("Requested software release {url} to be removed from {}.", args.node),
    }
    Ok(0)
}

pub fn run(cmd: ClientCommand, global: &Global) -> anyhow::Result<u8> {
    let settings = ClientSettings::load(global)?;
    match cmd {
        ClientCommand::Request(args) => request(args, &settings),
        ClientCommand::Supply(args) => supply(args, &settings, SoftwareState::Available),
        ClientCommand::Remove(args) => supply(args, &settings, SoftwareState::Destroyed),
        ClientCommand::Service(ServiceCommand::List(a)) => {
            let services = settings.hateoas()?.services()?;
            if a.json {
                let m: serde_json::Map<String, serde_json::Value> =
                    services.iter().map(|s| (s.title.clone(), json!(s.software_release))).collect();
                outln!("{}", serde_json::to_string_pretty(&m)?);
            } else {
                outln!(
                    "{}",
                    table(
                        &["service", "software release"],
                        services.iter().map(|s| vec![s.title.clone(), optional(&s.software_release)]).collect()
                    )
                );
            }
            Ok(0)
        }
        ClientCommand::Service(ServiceCommand::Info(ServiceInfoArgs { info: a, news })) => {
            let Some(info) = settings.hateoas()?.service(&a.reference)? else {
                bail!("service '{}' does not exist on {}", a.reference, settings.master_url);
            };
            let conn = connection_json(&info.connection_parameters);
            let params = connection_json(&info.parameters);
            if a.json {
                let doc = json!({
                    "software-url": info.software_release,
                    "software-type": info.software_type,
                    "shared": info.shared,
                    "requested-state": info.requested_state,
                    "instance-parameters": params,
                    "connection-parameters": conn,
                    "reported-state": info.reported_state,
                    "reported-message": info.reported_message,
                    "reported-at": info.reported_at,
                    "status": news_status(info.news.as_ref()),
                });
                let mut doc = doc;
                if let (true, Some(n)) = (news, info.news.as_ref().and_then(|n| n.get("instance"))) {
                    doc["news"] = n.clone();
                }
                outln!("{}", serde_json::to_string_pretty(&doc)?);
            } else {
                let mut rows = vec![
                    vec!["software release".into(), optional(&info.software_release)],
                    vec!["software type".into(), optional(&info.software_type)],
                    vec!["shared".into(), info.shared.to_string()],
                    vec!["requested state".into(), optional(&info.requested_state)],
                    vec!["status".into(), news_status(info.news.as_ref()).into()],
                ];
                if let Some(s) = &info.reported_state {
                    let at = info
                        .reported_at
                        .and_then(|t| chrono::DateTime::from_timestamp(t as i64, 0))
                        .map(|d| d.with_timezone(&chrono::Local).format("%Y-%m-%d %H:%M:%S").to_string())
                        .unwrap_or_default();
                    rows.push(vec!["last report".into(), format!("{s} at {at}")]);
                    if let Some(m) = info.reported_message.as_deref().filter(|m| !m.is_empty()) {
                        rows.push(vec![
                            "report message".into(),
                            m.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n"),
                        ]);
                    }
                }
                outln!("Service {}\n{}", info.title, table(&["", ""], rows));
                outln!("Instance parameters:");
                print_parameters(&params);
                outln!("Connection parameters:");
                print_parameters(&conn);
                if news {
                    print_news(info.news.as_ref());
                }
            }
            Ok(0)
        }
        ClientCommand::Computer(ComputerCommand::List(a)) => {
            let computers = settings.hateoas()?.computers()?;
            if a.json {
                outln!("{}", serde_json::to_string_pretty(&computers)?);
            } else {
                outln!(
                    "{}",
                    table(&["computer", "title"], computers.iter().map(|c| vec![c.reference.clone(), optional(&c.title)]).collect())
                );
            }
            Ok(0)
        }
        ClientCommand::Computer(ComputerCommand::Token(a)) => crate::identity_cmd::computer_token(&a, global),
        ClientCommand::Computer(ComputerCommand::Info(a)) => {
            let Some(c) = settings.hateoas()?.computer(&a.reference)? else {
                bail!("computer '{}' does not exist on {}", a.reference, settings.master_url);
            };
            if a.json {
                outln!("{}", serde_json::to_string_pretty(&c)?);
            } else {
                outln!("{}", table(&["computer", "title"], vec![vec![c.reference.clone(), optional(&c.title)]]));
            }
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn parameters_files_are_read_by_their_extension() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = "# comment\nname: web\nport: 8080\nratio: 1.5\non: true\ntags: [a, b]\nnested: {k: v}\nempty: null\nquoted: \"042\"\n";
        let expected = json!({"name": "web", "port": 8080, "ratio": 1.5, "on": true, "tags": ["a", "b"], "nested": {"k": "v"}, "empty": null, "quoted": "042"});
        for name in ["p.yaml", "p.yml"] {
            let ParametersFile::Values(m) = read_parameters_file(&file(dir.path(), name, yaml)).unwrap() else { panic!() };
            assert_eq!(serde_json::Value::Object(m.clone()), expected, "{name}");
            assert_eq!(
                m.keys().next().map(String::as_str),
                Some("name"),
                "the document's order is kept (json.dumps of json-in-xml follows it)"
            );
        }
        let xml = "<?xml version='1.0' encoding='utf-8'?>\n<instance>\n  <parameter id=\"a\">1</parameter>\n  <parameter id=\"e\"></parameter>\n  <parameter id=\"_\">{\"x\": 1}</parameter>\n</instance>\n";
        let ParametersFile::Xml(d) = read_parameters_file(&file(dir.path(), "p.xml", xml)).unwrap() else { panic!() };
        let expected: BTreeMap<String, Option<String>> = [("a", Some("1")), ("e", None), ("_", Some("{\"x\": 1}"))]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
            .collect();
        assert_eq!(d, expected, "texts as they are, an empty parameter is None (lxml's e.text)");
        let ParametersFile::Values(m) = read_parameters_file(&file(dir.path(), "p.txt", "{\"a\": [1]}")).unwrap() else { panic!() };
        assert_eq!(m["a"], json!([1]), "any other extension is JSON");
    }

    #[test]
    fn bad_parameters_files_say_which_and_why() {
        let dir = tempfile::tempdir().unwrap();
        let err = |name: &str, text: &str| read_parameters_file(&file(dir.path(), name, text)).unwrap_err().to_string();
        let e = err("bad.yaml", "a: [1, 2\nb: 3\n");
        assert!(e.contains("invalid YAML in") && e.contains("bad.yaml") && !e.contains('\n'), "{e}");
        let e = err("list.yml", "- a\n- b\n");
        assert!(e.contains("must be a YAML mapping, not an array"), "{e}");
        let e = err("bad.xml", "<instance><parameter id=\"a\">1</instance>");
        assert!(e.contains("invalid instance XML in") && e.contains("bad.xml"), "{e}");
        // an alias bomb is refused, not expanded
        let bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\ng: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]\nh: [*g, *g, *g, *g, *g, *g, *g, *g, *g, *g]\n";
        let e = err("bomb.yaml", bomb);
        assert!(e.contains("invalid YAML"), "{e}");
    }
}
