//! A model-based property test of the log through the real server, on SQLite and
//! Postgres: random sequences of pushes (new ops, retries, reused ids, stale heads,
//! per-entity bases) and acks, each answer checked against a simple in-memory
//! reference, and the whole log compared with the reference at the end.
//! DESIGN.md invariants 1, 2 and 3.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

#[macro_use]
mod common;

use std::collections::HashMap;

use common::*;
use opsync::client::Client;
use opsync::ids::{DeviceId, OpId};
use opsync::protocol::{AckRequest, NewOp, OnStale, OpStatus, PushRequest};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

#[derive(Debug, Clone)]
enum Step {
    /// Push `n` new ops, plus copies of earlier ops (retries) at these positions.
    Push { new: Vec<(Option<u8>, u8)>, retries: Vec<usize> },
    /// Push an earlier op's id with another payload: refused whole.
    Reuse { earlier: usize, also_new: bool },
    /// Push with `on_stale: reject` and an expected head `behind` the head.
    Optimistic { behind: i64 },
    /// Push an op on an entity, based on its last seq minus `lag`.
    Based { entity: u8, lag: i64 },
    /// Ack a device at head minus `lag`.
    Ack { device: u8, lag: i64 },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (prop::collection::vec((prop::option::of(0u8..3), any::<u8>()), 1..5), prop::collection::vec(any::<usize>(), 0..3))
            .prop_map(|(new, retries)| Step::Push { new, retries }),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(earlier, also_new)| Step::Reuse { earlier, also_new }),
        1 => (0i64..3).prop_map(|behind| Step::Optimistic { behind }),
        2 => (0u8..3, 0i64..2).prop_map(|(entity, lag)| Step::Based { entity, lag }),
        1 => (0u8..2, 0i64..3).prop_map(|(device, lag)| Step::Ack { device, lag }),
    ]
}

/// The reference: the log as a list, the last seq per entity, the cursors.
#[derive(Default)]
struct Model {
    log: Vec<NewOp>,
    entities: HashMap<String, i64>,
    cursors: HashMap<String, i64>,
}

impl Model {
    fn head(&self) -> i64 {
        self.log.len() as i64
    }

    fn append(&mut self, op: NewOp) -> i64 {
        self.log.push(op);
        let seq = self.head();
        if let Some(e) = &self.log[seq as usize - 1].entity {
            self.entities.insert(e.clone(), seq);
        }
        seq
    }
}

fn entity_name(e: u8) -> String {
    format!("entity-{e}")
}

async fn run(c: &Client, steps: Vec<Step>) -> Result<(), TestCaseError> {
    let mut m = Model::default();
    for step in steps {
        match step {
            Step::Push { new, retries } => {
                let mut ops: Vec<NewOp> = new
                    .iter()
                    .map(|(entity, byte)| NewOp { entity: entity.map(entity_name), ..op(&[*byte]) })
                    .collect();
                let retried: Vec<NewOp> = if m.log.is_empty() {
                    vec![]
                } else {
                    let mut picks: Vec<usize> = retries.iter().map(|i| i % m.log.len()).collect();
                    picks.sort_unstable();
                    picks.dedup();
                    picks.into_iter().map(|i| m.log[i].clone()).collect()
                };
                ops.extend(retried.iter().cloned());
                let res = c.push(&push_of(ops.clone())).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
                for (sent, result) in ops.iter().zip(&res.results) {
                    prop_assert_eq!(sent.id, result.id);
                    match m.log.iter().position(|o| o.id == sent.id) {
                        Some(i) => {
                            prop_assert_eq!(result.status, OpStatus::Duplicate);
                            prop_assert_eq!(result.seq, i as i64 + 1);
                        }
                        None => {
                            let seq = m.append(sent.clone());
                            prop_assert_eq!(result.status, OpStatus::Stored);
                            prop_assert_eq!(result.seq, seq);
                        }
                    }
                }
                prop_assert_eq!(res.head, m.head());
            }
            Step::Reuse { earlier, also_new } => {
                if m.log.is_empty() {
                    continue;
                }
                let mut reused = m.log[earlier % m.log.len()].clone();
                reused.payload.0.push(0xAA);
                let mut ops = vec![reused];
                if also_new {
                    ops.insert(0, op(b"innocent bystander"));
                }
                let err = c.push(&push_of(ops)).await.err().map(|e| e.code().map(str::to_owned));
                prop_assert_eq!(err, Some(Some("op_id_conflict".to_owned())));
            }
            Step::Optimistic { behind } => {
                let expected = (m.head() - behind).max(0);
                let new = op(b"optimistic");
                let req = PushRequest {
                    expected_head: Some(expected),
                    on_stale: Some(OnStale::Reject),
                    ..push_of(vec![new.clone()])
                };
                match c.push(&req).await {
                    Ok(res) => {
                        prop_assert_eq!(expected, m.head(), "a stale head must be refused");
                        prop_assert_eq!(res.results[0].seq, m.append(new));
                    }
                    Err(e) => {
                        prop_assert!(expected < m.head(), "a current head must be accepted: {}", e);
                        prop_assert_eq!(e.code(), Some("stale_head"));
                    }
                }
            }
            Step::Based { entity, lag } => {
                let name = entity_name(entity);
                let last = m.entities.get(&name).copied().unwrap_or(0);
                let base = (last - lag).max(0);
                let new = entity_op(&name, Some(base), b"based");
                match c.push(&push_of(vec![new.clone()])).await {
                    Ok(res) => {
                        prop_assert!(base >= last, "base {} < entity seq {} must conflict", base, last);
                        prop_assert_eq!(res.results[0].seq, m.append(new));
                    }
                    Err(e) => {
                        prop_assert!(base < last, "base {} >= entity seq {} must pass: {}", base, last, e);
                        prop_assert_eq!(e.code(), Some("entity_conflict"));
                    }
                }
            }
            Step::Ack { device, lag } => {
                let device = format!("device-{device}");
                let seq = (m.head() - lag).max(0);
                let req = AckRequest { device: Some(DeviceId::new(device.clone()).unwrap()), seq };
                let res = c.ack(&req).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
                let cursor = m.cursors.entry(device).or_insert(0);
                *cursor = (*cursor).max(seq);
                prop_assert_eq!(res.seq, *cursor);
            }
        }
    }
    // The whole log: seqs 1..head, each op exactly as the reference holds it.
    let log = c.pull_all(0).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(log.head, m.head());
    prop_assert_eq!(log.ops.len(), m.log.len());
    for (i, (stored, expected)) in log.ops.iter().zip(&m.log).enumerate() {
        prop_assert_eq!(stored.seq, i as i64 + 1);
        prop_assert_eq!(stored.id, expected.id);
        prop_assert_eq!(&stored.payload, &expected.payload);
        prop_assert_eq!(&stored.entity, &expected.entity);
    }
    let status = c.status().await.map_err(|e| TestCaseError::fail(e.to_string()))?;
    let cursors: HashMap<String, i64> = status.devices.into_iter().map(|d| (d.id, d.ack_seq)).collect();
    prop_assert_eq!(cursors, m.cursors);
    Ok(())
}

fn check_against_model(backend: Backend) {
    let system = actix_web::rt::System::new();
    let Some(server) = system.block_on(TestServer::start(backend)) else { return };
    let mut runner = TestRunner::new(Config { cases: 24, failure_persistence: None, ..Config::default() });
    let result = runner.run(&prop::collection::vec(step(), 1..40), |steps| {
        // A user of its own per case: users are independent partitions.
        let user = format!("model-{}", OpId::generate());
        system.block_on(run(&server.client(&user), steps))
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn sqlite_log_matches_the_model() {
    check_against_model(Backend::Sqlite);
}

#[test]
fn postgres_log_matches_the_model() {
    check_against_model(Backend::Postgres);
}
