//! What becomes of canaries, driven through the library: deadlines declared
//! on time, inject and catch on different systems, and per-partition lanes
//! on Kafka (librdkafka's mock cluster and tansu).

#[path = "../support/mod.rs"]
mod support;

mod cross;
mod deadline;
mod partitions;
mod templates;
