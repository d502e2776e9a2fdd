//! The MCP server itself ([`McpServer`], an rmcp `ServerHandler`): tools
//! and resources for the caller of each request, and change notifications
//! for subscribers (`resources/subscribe` before protocol 2026-07-28,
//! `subscriptions/listen` from it on).

use super::resources::{self, Target};
use super::scope::Caller;
use super::tools::{self, Shared};
use rmcp::ErrorData as McpError;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListResourceTemplatesResult, ListResourcesResult, ListToolsResult, PaginatedRequestParams,
    ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, ResourceContents,
    ResourceUpdatedNotificationParam, ServerCapabilities, ServerConfig, SubscribeRequestParams,
    SubscriptionFilter, UnsubscribeRequestParams,
};
use rmcp::service::{RequestContext, RoleServer, SubscriptionContext};
use rmcp::{Peer, ServerHandler};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

/// What the server tells clients about itself.
const INSTRUCTIONS: &str = "claude-failover keeps a pool of Claude Code sessions working across several Anthropic accounts. \
Read the pool with list_sessions, list_accounts, list_tasks, describe and recent_events; \
hand work to it with create_task (then wait_task for the result). \
Resources: claude-failover://pool/NAMESPACE and claude-failover://accounts/NAMESPACE/NAME.";

/// One MCP session's server (rmcp makes one per connection).
#[derive(Clone)]
pub struct McpServer {
    shared: Arc<Shared>,
    /// The stdio server's one caller; None over HTTP, where each request
    /// carries its caller (put there by the authentication layer).
    fixed: Option<Caller>,
    /// URIs subscribed with `resources/subscribe`.
    subscribed: Arc<Mutex<BTreeSet<String>>>,
    /// Whether this session's notifier runs.
    notifying: Arc<Mutex<bool>>,
}

impl McpServer {
    pub fn new(shared: Arc<Shared>, fixed: Option<Caller>) -> McpServer {
        McpServer {
            shared,
            fixed,
            subscribed: Default::default(),
            notifying: Default::default(),
        }
    }

    fn caller(&self, ctx: &RequestContext<RoleServer>) -> Result<Caller, McpError> {
        if let Some(c) = &self.fixed {
            return Ok(c.clone());
        }
        ctx.extensions
            .get::<axum::http::request::Parts>()
            .and_then(|p| p.extensions.get::<Caller>())
            .cloned()
            .ok_or_else(|| McpError::internal_error("the request carries no caller", None))
    }

    /// The namespace of the caller's resources: an agent's own, else the
    /// configured one.
    fn namespace(&self, caller: &Caller) -> String {
        caller
            .agent_session()
            .map(|k| k.namespace.clone())
            .unwrap_or_else(|| self.shared.namespace.clone())
    }

    /// Starts this session's notifier (once): it tells the peer about the
    /// subscribed URIs that change, until the peer goes.
    fn start_notifier(&self, peer: Peer<RoleServer>) {
        let mut on = self.notifying.lock().unwrap_or_else(|e| e.into_inner());
        if *on {
            return;
        }
        *on = true;
        let subscribed = self.subscribed.clone();
        let pool = self.shared.pool.clone();
        tokio::spawn(resources::follow(pool, move |uris, list| {
            let peer = peer.clone();
            let wanted: Vec<String> = {
                let subs = subscribed.lock().unwrap_or_else(|e| e.into_inner());
                if uris.contains("") {
                    subs.iter().cloned().collect()
                } else {
                    uris.intersection(&subs).cloned().collect()
                }
            };
            async move {
                if peer.is_transport_closed() {
                    return false;
                }
                for uri in wanted {
                    if peer
                        .notify_resource_updated(ResourceUpdatedNotificationParam::new(uri))
                        .await
                        .is_err()
                    {
                        return false;
                    }
                }
                if list && peer.notify_resource_list_changed().await.is_err() {
                    return false;
                }
                true
            }
        }));
    }
}

fn text_error(message: impl Into<String>) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(message.into())])
}

impl ServerHandler for McpServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .enable_resources_subscribe()
                .enable_resources_list_changed()
                .build(),
        )
        .with_server_info(Implementation::new(
            super::SERVER_NAME,
            env!("CARGO_PKG_VERSION"),
        ))
        .with_instructions(INSTRUCTIONS)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let caller = self.caller(&ctx)?;
        Ok(ListToolsResult::with_all_items(
            tools::CATALOG
                .iter()
                .filter(|t| caller.may(t.access))
                .map(|t| t.tool())
                .collect(),
        ))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let caller = self.caller(&ctx)?;
        let Some(def) = tools::find(&request.name) else {
            let names: Vec<&str> = tools::CATALOG.iter().map(|t| t.name).collect();
            return Err(McpError::invalid_params(
                format!(
                    "unknown tool {:?} (tools: {})",
                    request.name,
                    names.join(", ")
                ),
                None,
            ));
        };
        if let Some(why) = caller.refusal(def.name, def.access) {
            return Ok(text_error(why).into());
        }
        let args = request.arguments.unwrap_or_default();
        Ok(tools::call(&self.shared, &caller, def, args).await.into())
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        let caller = self.caller(&ctx)?;
        let ns = self.namespace(&caller);
        resources::list(&self.shared.pool, &ns)
            .await
            .map(ListResourcesResult::with_all_items)
            .map_err(|e| McpError::internal_error(e.to_string(), None))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        Ok(ListResourceTemplatesResult::with_all_items(
            resources::templates(),
        ))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let caller = self.caller(&ctx)?;
        let target =
            resources::parse(&request.uri).map_err(|e| McpError::resource_not_found(e, None))?;
        if let (Some(agent), Target::Account(k)) = (caller.agent_session(), &target)
            && agent.namespace != k.namespace
        {
            return Err(McpError::invalid_params(
                format!("an agent reads its own namespace ({})", agent.namespace),
                None,
            ));
        }
        let v = resources::read(&self.shared.pool, &target)
            .await
            .map_err(|e| McpError::resource_not_found(e, None))?;
        let text = serde_json::to_string_pretty(&v).expect("JSON");
        Ok(ReadResourceResult::new(vec![
            ResourceContents::text(text, request.uri).with_mime_type("application/json"),
        ])
        .into())
    }

    #[allow(deprecated)]
    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        resources::parse(&request.uri).map_err(|e| McpError::invalid_params(e, None))?;
        self.subscribed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(request.uri);
        self.start_notifier(ctx.peer.clone());
        Ok(())
    }

    #[allow(deprecated)]
    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.subscribed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&request.uri);
        Ok(())
    }

    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        let mut accepted = SubscriptionFilter::new();
        accepted.resources_list_changed = requested.resources_list_changed;
        accepted.resource_subscriptions = requested.resource_subscriptions.as_ref().map(|uris| {
            uris.iter()
                .filter(|u| resources::parse(u).is_ok())
                .cloned()
                .collect()
        });
        Some(accepted)
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), McpError> {
        let wanted: BTreeSet<String> = context
            .accepted()
            .resource_subscriptions
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let list_wanted = context.accepted().resources_list_changed == Some(true);
        let sink = context.sink().clone();
        let follow = resources::follow(self.shared.pool.clone(), move |uris, list| {
            let sink = sink.clone();
            let uris: Vec<String> = if uris.contains("") {
                wanted.iter().cloned().collect()
            } else {
                uris.intersection(&wanted).cloned().collect()
            };
            async move {
                for uri in uris {
                    if sink.notify_resource_updated(uri).await.is_err() {
                        return false;
                    }
                }
                if list && list_wanted && sink.notify_resource_list_changed().await.is_err() {
                    return false;
                }
                true
            }
        });
        tokio::select! {
            _ = context.cancelled() => {}
            _ = follow => {}
        }
        Ok(())
    }
}
