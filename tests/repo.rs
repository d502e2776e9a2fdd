//! Files in the repository that must stay in step with the code.

use claude_failover::config::{
    ApiConfig, Config, DispatchConfig, FailbackConfig, JanitorConfig, LogConfig, NotifyConfig,
    QuotaConfig, TelegramConfig, WebhookConfig,
};
use claude_failover::mcp::config::{DelegationConfig, McpConfig, TokenConfig};
use std::path::Path;

fn repo(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

#[test]
fn committed_crds_match_the_code() {
    let committed = std::fs::read_to_string(repo("manifests/crds.yaml")).unwrap();
    assert!(
        committed == claude_failover::cli::crds_yaml(),
        "manifests/crds.yaml is stale: run `cargo run -- crds > manifests/crds.yaml`"
    );
}

#[test]
fn crds_are_valid_apiextensions_v1() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let text = std::fs::read_to_string(repo("manifests/crds.yaml")).unwrap();
    let crds: Vec<CustomResourceDefinition> = serde_saphyr::from_multiple(&text).unwrap();
    assert_eq!(crds.len(), claude_failover::api::Kind::ALL.len());
    for crd in crds {
        let v = &crd.spec.versions[0];
        assert_eq!(crd.spec.group, "claude-failover.io");
        assert_eq!(v.name, "v1alpha1");
        assert!(v.served && v.storage);
        assert!(
            v.subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "status subresource"
        );
        assert!(
            v.schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .is_some()
        );
        assert!(!v.additional_printer_columns.as_ref().unwrap().is_empty());
        // The short name the CLI takes is the CRD's (kinds people type
        // often have one).
        let kind = claude_failover::api::Kind::from_kind_field(&crd.spec.names.kind).unwrap();
        let short = crd.spec.names.short_names.clone().unwrap_or_default();
        if kind.declared() || kind == claude_failover::api::Kind::ManifestSync {
            assert_eq!(short, [kind.short_name()], "{}", crd.spec.names.kind);
        } else {
            assert!(
                short.is_empty() || short == [kind.short_name()],
                "{}",
                crd.spec.names.kind
            );
        }
    }
}

/// config.example.yaml must decode and set every key: adding a field to
/// Config without documenting it breaks this destructuring.
#[test]
fn config_example_covers_every_key() {
    let path = repo("config.example.yaml");
    let cfg = Config::load(&path, true).unwrap();
    let Config {
        store: Some(_),
        etcd:
            claude_failover::store::EtcdOptions {
                ca_file: Some(_),
                cert_file: Some(_),
                key_file: Some(_),
                username: Some(_),
                password_file: Some(_),
                dial_timeout_seconds: Some(_),
            },
        namespace: Some(_),
        manifests: Some(_),
        resync_seconds: Some(_),
        state_dir: Some(_),
        listen: Some(_),
        tmux_socket: Some(_),
        transcripts_dir: Some(_),
        log: LogConfig {
            format: Some(_),
            level: Some(_),
        },
        dispatch:
            DispatchConfig {
                cooldown_seconds: Some(_),
                timeout_seconds: Some(_),
                max_attempts: Some(_),
                models: Some(_),
            },
        janitor:
            JanitorConfig {
                interval_seconds: Some(_),
                keep_finished_seconds: Some(_),
            },
        quota:
            QuotaConfig {
                usage_base_url: Some(_),
                poll_interval_seconds: Some(_),
                stale_seconds: Some(_),
                hysteresis_percent: Some(_),
                turn_wait_seconds: Some(_),
                confirm_seconds: Some(_),
                strategy: Some(_),
                drain: Some(_),
                failback:
                    Some(FailbackConfig {
                        enabled: Some(_),
                        margin_percent: Some(_),
                        cooldown_seconds: Some(_),
                    }),
                continue_message: Some(_),
                checkpoint_seconds: Some(_),
                keep_checkpoints_seconds: Some(_),
            },
        notify:
            NotifyConfig {
                telegram:
                    Some(TelegramConfig {
                        base_url: Some(_),
                        chat_id: _,
                        token_env: Some(_),
                        token_file: Some(_),
                    }),
                webhook:
                    Some(WebhookConfig {
                        url: _,
                        token_env: Some(_),
                        token_file: Some(_),
                    }),
                min_interval_seconds: Some(_),
                dedup_seconds: Some(_),
                max_attempts: Some(_),
            },
        api: ApiConfig {
            socket: Some(_),
            token_file: Some(_),
        },
        node:
            claude_failover::config::NodeConfig {
                name: Some(_),
                capacity: Some(_),
            },
        mcp:
            McpConfig {
                write: Some(_),
                tokens,
                delegation:
                    DelegationConfig {
                        max_depth: Some(_),
                        max_tasks: Some(_),
                        window_seconds: Some(_),
                    },
            },
    } = cfg
    else {
        panic!("config.example.yaml leaves a key unset: {cfg:?}");
    };
    let [TokenConfig { .. }] = tokens.as_slice() else {
        panic!("config.example.yaml shows one MCP token: {tokens:?}");
    };
}

#[test]
fn example_manifests_are_valid() {
    let loaded = claude_failover::manifest::load_paths(
        &[repo("manifests/examples")],
        &claude_failover::manifest::LoadOptions {
            recursive: true,
            namespace: "default".into(),
        },
    );
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let count = |k| {
        loaded
            .objects
            .iter()
            .filter(|d| d.object.kind() == k)
            .count()
    };
    use claude_failover::api::Kind;
    assert_eq!(
        (
            count(Kind::Account),
            count(Kind::Session),
            count(Kind::Task)
        ),
        (2, 3, 3)
    );
}
