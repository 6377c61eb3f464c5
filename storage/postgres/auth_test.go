package postgres_test

import (
	"context"
	"crypto/rand"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/membercenter/membercenter/storage/postgres"
	"github.com/membercenter/membercenter/storage/postgres/pgtest"
)

func TestMemberNoMigrationNumbersExistingMembers(t *testing.T) {
	ctx := context.Background()
	pool, p := migratedTo(t, 2)
	// Created out of id order: numbers follow creation time.
	base := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	ids := []uuid.UUID{uuid.New(), uuid.New(), uuid.New()}
	for i, at := range []time.Time{base.Add(2 * time.Hour), base, base.Add(time.Hour)} {
		if err := postgres.InsertMember(ctx, pool, ids[i], at); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := p.UpTo(ctx, 3); err != nil {
		t.Fatalf("migrate to 00003: %v", err)
	}
	for i, want := range []int64{3, 1, 2} {
		m, err := postgres.GetMemberNo(ctx, pool, ids[i])
		if err != nil {
			t.Fatal(err)
		}
		if m.MemberNo != want || m.Status != "active" {
			t.Errorf("member created %d-th has number %d (status %s), want %d", i, m.MemberNo, m.Status, want)
		}
	}
	// New members draw from the same sequence.
	fresh := uuid.New()
	if _, err := pool.Exec(ctx, `INSERT INTO members (member_id) VALUES ($1)`, fresh); err != nil {
		t.Fatal(err)
	}
	m, err := postgres.GetMemberByNo(ctx, pool, 4)
	if err != nil || m.MemberID != fresh {
		t.Fatalf("member number 4: %v, %v; want %s", m.MemberID, err, fresh)
	}
	// Numbers are unique and required.
	if _, err := pool.Exec(ctx, `UPDATE members SET member_no = 1 WHERE member_id = $1`, fresh); !postgres.IsUniqueViolation(err) {
		t.Fatalf("duplicate member number: %v, want a unique violation", err)
	}
	if _, err := pool.Exec(ctx, `UPDATE members SET member_no = NULL WHERE member_id = $1`, fresh); err == nil {
		t.Fatal("a member without a number was accepted")
	}
	// The rest of the migrations apply on top, and 00003 rolls back cleanly.
	if _, err := p.Up(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := p.DownTo(ctx, 2); err != nil {
		t.Fatalf("roll back to 00002: %v", err)
	}
	if _, err := p.Up(ctx); err != nil {
		t.Fatalf("re-apply: %v", err)
	}
}

func TestAuthQueries(t *testing.T) {
	ctx := context.Background()
	pool := pgtest.NewPool(t, nil)
	member := uuid.Must(uuid.NewV7())
	now := time.Now().UTC().Truncate(time.Microsecond)
	if err := postgres.InsertMember(ctx, pool, member, now); err != nil {
		t.Fatal(err)
	}
	if _, err := postgres.GetMemberByNo(ctx, pool, 999); !errors.Is(err, postgres.ErrNotFound) {
		t.Fatalf("unknown member number: %v", err)
	}

	// Code secrets: the first insert wins.
	if _, err := postgres.GetCodeSecret(ctx, pool, member); !errors.Is(err, postgres.ErrNotFound) {
		t.Fatalf("missing secret: %v", err)
	}
	for i, want := range []bool{true, false} {
		ok, err := postgres.InsertCodeSecret(ctx, pool, postgres.CodeSecretRow{MemberID: member, Cipher: []byte{byte(i)}, KeyID: "k", CreatedAt: now})
		if err != nil || ok != want {
			t.Fatalf("insert secret %d: %v, %v; want %v", i, ok, err, want)
		}
	}
	s, err := postgres.GetCodeSecret(ctx, pool, member)
	if err != nil || s.Cipher[0] != 0 || s.KeyID != "k" || !s.CreatedAt.Equal(now) {
		t.Fatalf("secret %+v, %v", s, err)
	}

	// Code uses: a step is used once; the latest step is reported.
	if _, ok, err := postgres.LastCodeStep(ctx, pool, member); ok || err != nil {
		t.Fatalf("last step of an unused member: %v, %v", ok, err)
	}
	for _, u := range []struct {
		step int64
		want bool
	}{{10, true}, {12, true}, {10, false}} {
		ok, err := postgres.InsertCodeUse(ctx, pool, postgres.CodeUse{MemberID: member, Step: u.step, UsedAt: now, StoreID: "S", TerminalID: "T"})
		if err != nil || ok != u.want {
			t.Fatalf("use step %d: %v, %v; want %v", u.step, ok, err, u.want)
		}
	}
	if last, ok, err := postgres.LastCodeStep(ctx, pool, member); last != 12 || !ok || err != nil {
		t.Fatalf("last step %d, %v, %v; want 12", last, ok, err)
	}

	// Terminals.
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	term := postgres.TerminalRow{TerminalID: "T1", StoreID: "S1", PublicKey: key, Description: "d", RegisteredAt: now}
	if err := postgres.InsertTerminal(ctx, pool, term); err != nil {
		t.Fatal(err)
	}
	if err := postgres.InsertTerminal(ctx, pool, postgres.TerminalRow{TerminalID: "T2", StoreID: "S1", PublicKey: key, RegisteredAt: now}); !postgres.IsUniqueViolation(err) {
		t.Fatalf("a second terminal with the same key: %v, want a unique violation", err)
	}
	if err := postgres.InsertTerminal(ctx, pool, postgres.TerminalRow{TerminalID: "T3", StoreID: "S1", PublicKey: key[:31], RegisteredAt: now}); err == nil || !strings.Contains(err.Error(), "check") {
		t.Fatalf("a 31-byte key: %v, want a check violation", err)
	}
	got, err := postgres.FindTerminalByKey(ctx, pool, key)
	if err != nil || got.TerminalID != "T1" || got.RevokedAt != nil || !got.RegisteredAt.Equal(now) {
		t.Fatalf("terminal by key %+v, %v", got, err)
	}
	revoked, err := postgres.RevokeTerminal(ctx, pool, "T1", now.Add(time.Minute), "lost")
	if err != nil || revoked.RevokedAt == nil || !revoked.RevokedAt.Equal(now.Add(time.Minute)) || revoked.RevokeReason != "lost" {
		t.Fatalf("revoked %+v, %v", revoked, err)
	}
	if _, err := postgres.RevokeTerminal(ctx, pool, "T1", now.Add(time.Hour), "again"); !errors.Is(err, postgres.ErrNotFound) {
		t.Fatalf("revoking a revoked terminal: %v, want ErrNotFound", err)
	}
	if _, err := postgres.GetTerminal(ctx, pool, "nope"); !errors.Is(err, postgres.ErrNotFound) {
		t.Fatalf("unknown terminal: %v", err)
	}

	// Nonces: once per terminal.
	nonce := make([]byte, 16)
	for i, want := range []bool{true, false} {
		ok, err := postgres.InsertAssertionNonce(ctx, pool, postgres.AssertionNonce{TerminalID: "T1", Nonce: nonce, AssertedAt: now, SeenAt: now})
		if err != nil || ok != want {
			t.Fatalf("nonce %d: %v, %v; want %v", i, ok, err, want)
		}
	}
}
