'use strict'
// Differential reader: Express 5, its default query parser ("simple", Node's querystring), urlencoded({ extended: false }).
// The app itself is ../express-app.js, shared with the other Express reader.
//
//   node server.js PORT

require('../express-app.js')({
  NAME: 'express5',
  express: require('express'),
  methodOverride: require('method-override'),
  multer: require('multer'),
  queryParser: 'simple',
  extended: false,
  port: Number(process.argv[2])
})
