//! Wall-clock timing that works natively and in wasm32 (`web_time` uses `performance.now()`
//! there, where `std::time::Instant` panics).

use std::time::Duration;

pub struct Clock(web_time::Instant);

impl Clock {
    pub fn start() -> Self {
        Clock(web_time::Instant::now())
    }
    pub fn elapsed(&self) -> Duration {
        self.0.elapsed()
    }
    pub fn ms(&self) -> f64 {
        self.elapsed().as_secs_f64() * 1000.0
    }
}
