//! Component tests in a real browser (headless chromium through wasm-bindgen-test-runner):
//! the header's health summary and link indicator, and the whole app shell mounted with no
//! backend behind it.
#![cfg(target_arch = "wasm32")]

use std::time::Duration;

use leptos::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};
use web_sys::HtmlElement;

use attune_frontend::api::ApiError;
use attune_frontend::app::{App, HealthSummary, LinkIndicator};
use attune_frontend::link::{Link, LinkState};
use attune_shared::{ComputeDevice, DatabaseHealth, Health, ModelInfo, ModelKind, WeightFormat};

wasm_bindgen_test_configure!(run_in_browser);

/// A fresh element in the page to mount into.
fn container() -> HtmlElement {
    let document = web_sys::window().unwrap().document().unwrap();
    let div = document.create_element("div").unwrap().dyn_into::<HtmlElement>().unwrap();
    document.body().unwrap().append_child(&div).unwrap();
    div
}

async fn sleep(ms: u32) {
    gloo_timers::future::sleep(Duration::from_millis(u64::from(ms))).await;
}

fn model(name: &str, kind: ModelKind) -> ModelInfo {
    ModelInfo {
        name: name.into(),
        path: format!("/models/{name}"),
        kind,
        format: WeightFormat::Safetensors,
        architecture: None,
    }
}

#[wasm_bindgen_test]
async fn health_summary_shows_loading_models_and_errors() {
    let root = container();
    let health = RwSignal::new(None::<Result<Health, ApiError>>);
    let _mounted = leptos::mount::mount_to(root.clone(), move || view! { <HealthSummary health=health /> });
    assert!(root.text_content().unwrap().contains("checking backend"));

    health.set(Some(Ok(Health {
        version: "9.9.9".into(),
        models: vec![model("bge-small", ModelKind::Retriever), model("tiny-llama", ModelKind::Generator)],
        device: ComputeDevice::Cuda { ordinal: 1 },
        database: DatabaseHealth { ok: true, schema_version: 1 },
        threads: Vec::new(),
    })));
    leptos::task::tick().await;
    let chips = root.query_selector_all("[data-testid=models] li").unwrap();
    assert_eq!(chips.length(), 2);
    let first = chips.item(0).unwrap().dyn_into::<HtmlElement>().unwrap();
    assert_eq!(first.get_attribute("data-kind").as_deref(), Some("retriever"));
    assert!(first.text_content().unwrap().contains("bge-small"));
    let device = root.query_selector("[data-testid=device]").unwrap().unwrap();
    assert_eq!(device.text_content().as_deref(), Some("cuda:1"));

    health.set(Some(Ok(Health {
        version: "9.9.9".into(),
        models: vec![],
        device: ComputeDevice::Cpu,
        database: DatabaseHealth { ok: false, schema_version: 0 },
        threads: Vec::new(),
    })));
    leptos::task::tick().await;
    let text = root.text_content().unwrap();
    assert!(text.contains("no models found"), "{text}");
    assert!(text.contains("database unavailable"), "{text}");

    health.set(Some(Err(ApiError::from_response(401, r#"{"error":{"code":"unauthorized","message":"x"}}"#))));
    leptos::task::tick().await;
    assert!(root.text_content().unwrap().contains("?token="));
}

#[wasm_bindgen_test]
async fn link_indicator_follows_the_link_state() {
    let root = container();
    let (state, set_state) = signal(LinkState::Connecting);
    let (connections, _) = signal(0u32);
    let (synth, _) = signal(None);
    let link = Link {
        state,
        connections,
        synth,
        jobs: RwSignal::new(Default::default()),
        chat: RwSignal::new(Default::default()),
        board: RwSignal::new(Default::default()),
        sender: attune_frontend::link::Sender::none(),
    };
    let _mounted = leptos::mount::mount_to(root.clone(), move || view! { <LinkIndicator link=link /> });
    let indicator = root.query_selector("[data-testid=link]").unwrap().unwrap();
    assert_eq!(indicator.get_attribute("data-state").as_deref(), Some("connecting"));

    set_state.set(LinkState::Retrying { in_ms: 4000 });
    leptos::task::tick().await;
    assert_eq!(indicator.get_attribute("data-state").as_deref(), Some("retrying"));
    assert!(indicator.text_content().unwrap().contains("retrying in 4s"));

    set_state.set(LinkState::Connected);
    leptos::task::tick().await;
    assert_eq!(indicator.get_attribute("data-state").as_deref(), Some("connected"));
    assert_eq!(indicator.get_attribute("role").as_deref(), Some("status"));
}

#[wasm_bindgen_test]
async fn app_without_a_backend_shows_navigation_and_keeps_retrying() {
    let root = container();
    let _mounted = leptos::mount::mount_to(root.clone(), App);
    let links = root.query_selector_all("nav[aria-label=Main] a").unwrap();
    assert_eq!(links.length(), 5);
    let labels: Vec<String> = (0..links.length()).map(|i| links.item(i).unwrap().text_content().unwrap()).collect();
    assert_eq!(labels, ["Documents", "Triples", "Train", "Evaluate", "Chat"]);

    // The test page has no /ws behind it: the link must give up on this attempt and schedule another.
    let indicator = root.query_selector("[data-testid=link]").unwrap().unwrap();
    for _ in 0..100 {
        if indicator.get_attribute("data-state").as_deref() == Some("retrying") {
            break;
        }
        sleep(50).await;
    }
    assert_eq!(indicator.get_attribute("data-state").as_deref(), Some("retrying"));
    // The health call fails too, and says so instead of spinning forever.
    for _ in 0..100 {
        if root.query_selector("[data-testid=health-error]").unwrap().is_some() {
            break;
        }
        sleep(50).await;
    }
    assert!(root.query_selector("[data-testid=health-error]").unwrap().is_some());
}

#[wasm_bindgen_test]
async fn line_chart_redraws_as_points_arrive() {
    use attune_frontend::chart::{LineChart, Series};
    let root = container();
    let points = RwSignal::new(Vec::<(f64, f64)>::new());
    let series = Signal::derive(move || {
        vec![
            Series { label: "total", class: "s-total", points: points.get() },
            Series {
                label: "retriever",
                class: "s-retriever",
                points: points.get().iter().map(|(x, y)| (*x, y / 2.0)).collect(),
            },
        ]
    });
    let _mounted =
        leptos::mount::mount_to(root.clone(), move || view! { <LineChart title="Loss" testid="c" series=series /> });
    let chart = root.query_selector("[data-testid=c]").unwrap().unwrap();
    assert_eq!(chart.get_attribute("data-points").as_deref(), Some("0"));
    assert!(root.inner_text().contains("Waiting for the first step"));

    points.set(vec![(1.0, 4.0)]);
    leptos::task::tick().await;
    assert_eq!(chart.get_attribute("data-points").as_deref(), Some("1"));
    // A single point is drawn as a dot, so the first step is visible at once.
    assert_eq!(root.query_selector_all("circle.dot").unwrap().length(), 2);

    points.update(|p| p.extend([(2.0, 3.0), (3.0, 2.5)]));
    leptos::task::tick().await;
    assert_eq!(chart.get_attribute("data-points").as_deref(), Some("3"));
    let paths = root.query_selector_all("path.line").unwrap();
    assert_eq!(paths.length(), 2);
    let d = paths.get(0).unwrap().dyn_into::<web_sys::Element>().unwrap().get_attribute("d").unwrap();
    assert_eq!(d.matches('L').count(), 2, "{d}");
    assert!(root.inner_text().contains("retriever"), "the legend names the lines");
}

#[wasm_bindgen_test]
async fn line_chart_marks_steps_inside_its_range() {
    use attune_frontend::chart::{LineChart, Series};
    let root = container();
    let points = RwSignal::new(vec![(1.0, 4.0), (2.0, 3.0), (3.0, 2.0), (4.0, 1.5)]);
    let marks = RwSignal::new(Vec::<f64>::new());
    let series = Signal::derive(move || vec![Series { label: "total", class: "s-total", points: points.get() }]);
    let _mounted = leptos::mount::mount_to(root.clone(), move || {
        view! { <LineChart title="Loss" testid="m" series=series marks=marks marks_label="hard negatives mined again" /> }
    });
    let chart = root.query_selector("[data-testid=m]").unwrap().unwrap();
    assert_eq!(chart.get_attribute("data-marks").as_deref(), Some("0"));
    assert_eq!(root.query_selector_all("line.mark").unwrap().length(), 0);
    // Step 9 lies beyond the plotted steps: counted, not drawn.
    marks.set(vec![2.0, 9.0]);
    leptos::task::tick().await;
    assert_eq!(chart.get_attribute("data-marks").as_deref(), Some("2"));
    let drawn = root.query_selector_all("line.mark").unwrap();
    assert_eq!(drawn.length(), 1);
    let line = drawn.get(0).unwrap().dyn_into::<web_sys::Element>().unwrap();
    assert!(line.text_content().unwrap().contains("hard negatives mined again (after step 2)"));
}
