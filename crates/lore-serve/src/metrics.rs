//! Prometheus metrics (prometheus-client): requests and errors by route and status, latency
//! histograms by route, reward items by kind, embedding batch sizes, users, store commits.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// A route (its path template) and the response's status code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteStatus {
    /// The route template, e.g. `/v1/users/{id}`, or `unmatched`.
    pub route: String,
    /// The HTTP status code.
    pub status: u16,
}

/// A route's path template.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Route {
    /// The route template, e.g. `/v1/rewards`.
    pub route: String,
}

/// What kind of items were scored.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ItemKind {
    /// `features` (given by the client) or `text` (embedded by the server).
    pub kind: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 50 us to ~26 s.
    Histogram::new(exponential_buckets(0.00005, 2.0, 20))
}

/// The service's metrics and their registry.
pub struct Metrics {
    registry: Registry,
    /// Requests answered, by route and status.
    pub requests: Family<RouteStatus, Counter>,
    /// Requests answered with a 4xx or 5xx, by route and status.
    pub errors: Family<RouteStatus, Counter>,
    /// Request latency in seconds, by route.
    pub latency: HistogramFamily<Route>,
    /// Reward items scored, by kind.
    pub items: Family<ItemKind, Counter>,
    /// Texts per embedding forward pass.
    pub batch_sizes: Histogram,
    /// Users in the store (updated when scraped).
    pub users: Gauge,
    /// Durable commits of the store so far (updated when scraped).
    pub store_commits: Gauge<u64, AtomicU64>,
    /// Preference pairs acknowledged (durable).
    pub pairs_written: Counter,
    /// Users re-personalized after model swaps.
    pub users_refitted: Counter,
    /// 1 while a model swap re-personalizes users in the background.
    pub reload_in_progress: Gauge,
}

impl Metrics {
    /// Fresh metrics, registered under the prefix `lore`.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("lore");
        let requests = Family::<RouteStatus, Counter>::default();
        let errors = Family::<RouteStatus, Counter>::default();
        let latency: HistogramFamily<Route> = Family::new_with_constructor(latency_histogram);
        let items = Family::<ItemKind, Counter>::default();
        let batch_sizes = Histogram::new(exponential_buckets(1.0, 2.0, 12));
        let users = Gauge::default();
        let store_commits = Gauge::<u64, AtomicU64>::default();
        let pairs_written = Counter::default();
        let users_refitted = Counter::default();
        let reload_in_progress = Gauge::default();
        registry.register(
            "http_requests",
            "Requests answered, by route and status",
            requests.clone(),
        );
        registry.register(
            "http_errors",
            "Requests answered with a 4xx or 5xx status",
            errors.clone(),
        );
        registry.register_with_unit(
            "http_request_duration",
            "Request latency by route",
            prometheus_client::registry::Unit::Seconds,
            latency.clone(),
        );
        registry.register(
            "reward_items",
            "Reward items scored, by kind",
            items.clone(),
        );
        registry.register(
            "embed_batch_size",
            "Texts per embedding forward pass",
            batch_sizes.clone(),
        );
        registry.register("users", "Users in the store", users.clone());
        registry.register(
            "store_commits",
            "Durable (fsync'd) store commits",
            store_commits.clone(),
        );
        registry.register(
            "pairs_written",
            "Preference pairs acknowledged",
            pairs_written.clone(),
        );
        registry.register(
            "users_refitted",
            "Users re-personalized after model swaps",
            users_refitted.clone(),
        );
        registry.register(
            "reload_in_progress",
            "1 while a model swap refits users",
            reload_in_progress.clone(),
        );
        Self {
            registry,
            requests,
            errors,
            latency,
            items,
            batch_sizes,
            users,
            store_commits,
            pairs_written,
            users_refitted,
            reload_in_progress,
        }
    }

    /// Records one answered request.
    pub fn record(&self, route: &str, status: u16, elapsed: Duration) {
        let labels = RouteStatus {
            route: route.to_string(),
            status,
        };
        self.requests.get_or_create(&labels).inc();
        if status >= 400 {
            self.errors.get_or_create(&labels).inc();
        }
        self.latency
            .get_or_create(&Route {
                route: route.to_string(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
