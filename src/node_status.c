/* node_status.c - what the node says of itself: node_status (members,
 * indexes, alarms), node_ids, and node_health, the one rule of health
 * checks shared by HTTP and gRPC. */
#include <stdio.h>
#include <string.h>

#include "node_internal.h"

void node_status(struct node_status *st)
{
    struct raft_status rs;
    struct store_stats ss;
    memset(st, 0, sizeof *st);
    raft_status(nd->raft, &rs);
    NIO(store_stats, &ss);
    struct member *lm = members_find(rs.leader);
    st->id = nd->cfg->node_id;
    st->role = raft_role_name(rs.role);
    st->leader = lm ? lm->name : "";
    st->term = rs.term;
    st->commit_index = rs.commit;
    st->applied_index = nd->applied;
    st->last_index = rs.last_index;
    st->persisted_index = rs.persisted_index;
    st->uncommitted_bytes = rs.uncommitted;
    st->keys = kv_count(nd->kv);
    st->revision = kv_revision(nd->kv);
    st->fsyncs = ss.batches;
    st->fsync_entries = ss.entries;
    st->nospace = nd->alarm_disk || nd->alarm_quota;
    st->alarm_reason = st->nospace ? nd->alarm_reason : "";
    st->cluster_id = nd->cluster_id;
    st->self_id = nd->id;
    pz_free(nd->view);
    nd->view = pz_calloc(nd->n_members ? nd->n_members : 1,
                          sizeof *nd->view);
    for (size_t i = 0; i < nd->n_members; i++) {
        struct member *m = &nd->members[i];
        struct node_member *v = &nd->view[i];
        v->name = m->name;
        v->id = m->id;
        v->voter = m->voter;
        v->raft = m->raft;
        v->http = m->id == nd->id ? nd->cfg->http_addr : m->http;
        v->grpc = m->id == nd->id ? nd->cfg->grpc_addr : m->grpc;
        for (size_t j = 0; j < rs.n_peers; j++) {
            if (rs.peers[j].id == m->id) {
                v->match = rs.peers[j].match;
                v->last_contact_ms = rs.peers[j].last_contact * nd->tick_ms;
            }
        }
        struct peer_alarm *pa = palarm_get(m->id);
        v->alarm_reason = "";
        if (pa != NULL && pa->nospace) {
            v->nospace = true;
            v->alarm_reason = pa->reason;
        }
        if (m->id == nd->id)
            v->match = rs.persisted_index;
    }
    st->members = nd->view;
    st->n_members = nd->n_members;
}

void node_ids(uint64_t *cluster_id, uint64_t *self_id, uint64_t *term)
{
    *cluster_id = nd->cluster_id;
    *self_id = nd->id;
    *term = nd->saved_term;
}

/* The term of the entry at index: from the log, or the snapshot's when
 * index is its point; 0 when neither holds it. */
static uint64_t term_at(const struct raft_status *rs, uint64_t index)
{
    const struct raft_entry *e = raft_log_get(nd->raft, index);
    if (e != NULL)
        return e->term;
    return index == rs->snap_index ? rs->snap_term : 0;
}

bool node_health(struct node_health *h)
{
    struct raft_status rs;
    memset(h, 0, sizeof *h);
    if (!nd->open) {
        snprintf(h->reason, sizeof h->reason, "the node is not open");
        return false;
    }
    raft_status(nd->raft, &rs);
    struct member *lm = members_find(rs.leader);
    h->role = raft_role_name(rs.role);
    h->leader = lm ? lm->name : "";
    h->term = rs.term;
    uint64_t timeout_ms = (uint64_t)nd->cfg->election_timeout_ms;
    uint64_t window = timeout_ms / nd->tick_ms; /* election_ticks */
    if (nd->closing) {
        snprintf(h->reason, sizeof h->reason, "the node is shutting down");
        return false;
    }
    if (nd->ready_owed) {
        /* Nothing applies here until the log can be written. */
        snprintf(h->reason, sizeof h->reason,
                 "no space left on device: the Raft log cannot be written");
        return false;
    }
    if (rs.leader == 0) {
        snprintf(h->reason, sizeof h->reason, "no leader known (%s, term %llu)",
                 h->role, (unsigned long long)rs.term);
        return false;
    }
    if (rs.role != RAFT_LEADER) {
        /* The follower's lease: its election timer was reset by the leader
         * within the last election timeout. */
        if (!rs.lease) {
            snprintf(h->reason, sizeof h->reason,
                     "no word from the leader (%s) within the election "
                     "timeout (%llu ms)",
                     h->leader[0] ? h->leader : "unknown",
                     (unsigned long long)timeout_ms);
            return false;
        }
        return true;
    }
    /* Thesis §6.2 (CheckQuorum) as of now rather than at the next check:
     * a majority of the voters, this leader included, heard from within
     * the election timeout. */
    const struct raft_conf *conf = raft_conf_current(nd->raft, NULL);
    size_t voters = raft_conf_voters(conf), heard = 0;
    const struct raft_server *self = raft_conf_get(conf, nd->id);
    if (self != NULL && self->voter)
        heard++;
    for (size_t i = 0; i < rs.n_peers; i++)
        if (rs.peers[i].voter && rs.peers[i].last_contact < window)
            heard++;
    size_t quorum = voters / 2 + 1;
    if (heard < quorum) {
        snprintf(h->reason, sizeof h->reason,
                 "leader without a quorum: heard from %zu of %zu voters "
                 "within the election timeout (%llu ms), %zu needed",
                 heard, voters, (unsigned long long)timeout_ms, quorum);
        return false;
    }
    /* Thesis §6.4: a new leader serves reads once an entry of its term
     * (its no-op) is committed. */
    if (term_at(&rs, rs.commit) != rs.term) {
        snprintf(h->reason, sizeof h->reason,
                 "new leader: no entry of term %llu committed yet",
                 (unsigned long long)rs.term);
        return false;
    }
    return true;
}
