//! vigil-web: the demo page (a trunk app: load a model, type, watch the reasoning stream, see the
//! verdict). Not built yet: the page and its wasm runtime come with the browser issue (#4); this
//! crate only reserves its place in the workspace.

fn main() {
    eprintln!("vigil-web is the demo page; it is built with trunk once the browser runtime lands (issue #4)");
}
