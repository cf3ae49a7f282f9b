// Package errdefs classifies agentbox's errors so that every surface (CLI exit codes, HTTP status codes,
// SDK error types) reports them the same way. Errors keep their own messages; a class is attached with
// the constructors here and recovered with errors.Is.
package errdefs

import (
	"errors"
	"net/http"
)

// Class is a kind of failure a caller can act on.
type Class struct {
	name   string
	status int
}

func (c *Class) Error() string { return c.name }

// Name is the class's machine-readable code, e.g. "invalid_argument".
func (c *Class) Name() string { return c.name }

// HTTPStatus is the status code an HTTP API answers with for this class.
func (c *Class) HTTPStatus() int { return c.status }

// The classes.
var (
	InvalidArgument = &Class{"invalid_argument", http.StatusBadRequest}
	Unauthenticated = &Class{"unauthenticated", http.StatusUnauthorized}
	NotFound        = &Class{"not_found", http.StatusNotFound}
	Conflict        = &Class{"conflict", http.StatusConflict}
	TooLarge        = &Class{"too_large", http.StatusRequestEntityTooLarge}
	Overloaded      = &Class{"overloaded", http.StatusTooManyRequests}
	Unavailable     = &Class{"unavailable", http.StatusServiceUnavailable}
	Internal        = &Class{"internal", http.StatusInternalServerError}
)

// Forbidden is a request the server refuses whoever sends it, such as a browser's cross-origin POST.
var Forbidden = &Class{"forbidden", http.StatusForbidden}

var classes = []*Class{InvalidArgument, Unauthenticated, Forbidden, NotFound, Conflict, TooLarge, Overloaded, Unavailable, Internal}

type classified struct {
	class *Class
	err   error
}

func (e *classified) Error() string   { return e.err.Error() }
func (e *classified) Unwrap() []error { return []error{e.err, e.class} }

// With marks err as belonging to class. A nil err stays nil.
func With(class *Class, err error) error {
	if err == nil {
		return nil
	}
	return &classified{class: class, err: err}
}

// ClassOf returns the class err belongs to; Internal when none was attached.
func ClassOf(err error) *Class {
	for _, c := range classes {
		if errors.Is(err, c) {
			return c
		}
	}
	return Internal
}
